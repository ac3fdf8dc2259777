from pathlib import Path

import pytest

from homeskillet.covenant import CovenantBook, default_pool_class, fallback_chain, load_covenant
from homeskillet.errors import CovenantError, UnknownCovenant
from homeskillet.wire import Covenant, Query, Resources

SHIPPED = sorted((Path(__file__).parents[2] / "covenants").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_covenant_loads(path):
    cov = load_covenant(path)
    assert cov.name == path.stem and cov.covenant_id.startswith(cov.name + "@")
    assert fallback_chain(cov)[-1].kind == "fail"


def test_design_matrix_is_shipped():
    book = CovenantBook.load()
    matrix = {"gemma-2b": (2048, 5, "standard", True), "mistral-7b": (6144, 10, "standard", True),
              "qwen-14b": (14336, 20, "premium", False), "qwen-32b": (32768, 40, "premium", False),
              "qwen-70b": (81920, 100, "dedicated", False)}
    for name, (vram, tflops, pool, preempt) in matrix.items():
        c = book.get(name)
        assert (c.resources.min_vram_mb, c.resources.min_tflops, c.resources.pool_class, c.qos.preemptible) == (
            vram, tflops, pool, preempt)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[resources]\nmodel = "m"\nmin_vram = 3\n', "unknown key 'resources.min_vram'"),
        ('[resources]\nmodel = "m"\n[qos]\npriority = "high"\n', "Expected `int`, got `str` - at `$.qos.priority`"),
        ('[resources]\nmodel = "m"\nmin_vram_mb = 10\nmax_vram_mb = 5\n', "resources.max_vram_mb: 5 is below"),
        ('[resources]\nmodel = "m"\n[fallback]\nsteps = ["platinum"]\n', "names no known pool class"),
        ('[resources]\nmodel = "m"\n[fallback]\nsteps = ["fail", "local"]\n', "'fail' must be the last step"),
        ('[resources]\nmodel = "m"\n[qos]\nlatency_target_ms = 900\nhard_deadline_ms = 10\n', "hard_deadline_ms"),
        ('[resources]\nmodel = "m"\n[cost]\nmax_usd_per_request = 0\n', "cost.max_usd_per_request"),
        ("[resources\n", "not valid TOML"),
    ],
)
def test_bad_covenant_files_name_the_file_and_key(tmp_path, text, needle):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(CovenantError) as info:
        load_covenant(p)
    assert str(p) in info.value.message and needle in info.value.message


def test_overrides_merge_onto_the_template_and_are_checked_again():
    book = CovenantBook.load()
    base = book.get("gemma-2b")
    merged = book.resolve(Query(prompt="x", covenant="gemma-2b", overrides={"qos": {"priority": 99}}, max_tokens=7))
    assert merged.qos.priority == 99 and merged.max_tokens == 7
    assert merged.qos.latency_target_ms == base.qos.latency_target_ms
    assert merged.covenant_id != base.covenant_id
    with pytest.raises(CovenantError, match=r"resources\.max_vram_mb"):
        book.resolve(Query(prompt="x", covenant="gemma-2b", overrides={"resources": {"max_vram_mb": 1}}))


def test_lookup_by_model_and_unknown_names():
    book = CovenantBook.load()
    assert book.resolve(Query(prompt="x", model="qwen-32b")).name == "qwen-32b"
    assert book.resolve(Query(prompt="x")).name == "default"
    with pytest.raises(UnknownCovenant, match="known models"):
        book.resolve(Query(prompt="x", model="gpt-9"))


def test_default_allocation_policy():
    def cov(**qos):
        return Covenant(name="c", resources=Resources(model="m", min_vram_mb=4096),
                        qos=__import__("homeskillet.wire", fromlist=["Qos"]).Qos(**qos))

    assert default_pool_class(cov(latency_target_ms=300)) == "dedicated"
    assert default_pool_class(cov(preemptible=True)) == "preemptible"
    assert default_pool_class(cov()) == "standard"
