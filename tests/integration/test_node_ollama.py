"""``homeskillet node`` on a real port, driven by the official ``ollama`` client.

The first tests run the real model (SmolLM2-135M-Instruct on mlx-lm, a few greedy tokens each);
the protocol's corners (errors, queueing, keep-alive, disconnects) run on the toy test model."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import ollama
import pytest
import uvicorn
from starlette.applications import Starlette
from toy_model import get_model

from homeskillet import node
from homeskillet.embeddings import MiniLMEmbedder
from homeskillet.localmodel import GenRequest, LocalModel
from homeskillet.node import CHAT_TEMPLATE, SimpleGenerator, create_node_app, parse_keep_alive, render_chat
from homeskillet.testing import serve_asgi

NASTY = "$(rm -rf /); `id` | && ; 'quotes' \"dq\" \\n %s {{ .Prompt }} \x00 ünï"
GREEDY = {"num_predict": 12, "temperature": 0}
SHORT = {"num_predict": 8, "temperature": 0}
FRANCE = "What is the capital of France?"


@pytest.fixture(scope="module")
def real_url(local_model: LocalModel) -> Iterator[str]:
    with serve_asgi(create_node_app(models=["smollm2-135m", "alias:7b"]), "/api/version") as base:
        yield base


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_asgi(create_node_app(get_model(), models=["hs-tiny", "tiny-alias:7b"]), "/api/version") as base:
        yield base


@pytest.fixture
def client(url: str) -> ollama.Client:
    return ollama.Client(host=url)


# -- the real model ---------------------------------------------------------------------------------


def test_real_generate_and_stream(real_url: str, local_model: LocalModel) -> None:
    client = ollama.Client(host=real_url)
    resp = client.generate(model="smollm2-135m", prompt=FRANCE, options=SHORT)
    direct = local_model.generate(GenRequest(messages=[("user", FRANCE)], max_tokens=8))
    assert "Paris" in resp.response and resp.response == direct.text and resp.done
    assert (resp.eval_count, resp.prompt_eval_count) == (direct.completion_tokens, direct.prompt_tokens)
    assert resp.done_reason == direct.finish_reason
    durations = [resp.load_duration, resp.prompt_eval_duration, resp.eval_duration]
    assert all(isinstance(d, int) and d >= 0 for d in durations)
    assert resp.total_duration is not None and resp.total_duration >= sum(d or 0 for d in durations)
    *body, last = list(client.generate(model="smollm2-135m", prompt=FRANCE, options=SHORT, stream=True))
    assert len(body) >= 3 and all(not c.done for c in body)  # one line per decoded piece, not one blob
    assert "".join(c.response or "" for c in body) == resp.response and last.done


def test_real_chat_with_an_alias(real_url: str, local_model: LocalModel) -> None:
    client = ollama.Client(host=real_url)
    messages = [{"role": "system", "content": "Answer in one short sentence."}, {"role": "user", "content": FRANCE}]
    resp = client.chat(model="alias:7b", messages=messages, options=SHORT)
    direct = local_model.generate(GenRequest(messages=[(m["role"], m["content"]) for m in messages], max_tokens=8))
    assert resp.message.role == "assistant" and resp.message.content == direct.text and resp.model == "alias:7b"
    chunks = list(client.chat(model="smollm2-135m", messages=messages, options=SHORT, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == direct.text and chunks[-1].done


def test_real_tags_show_ps(real_url: str, local_model: LocalModel) -> None:
    client = ollama.Client(host=real_url)
    listed = {m.model: m for m in client.list().models}
    assert list(listed) == ["smollm2-135m:latest", "alias:7b", "all-minilm:latest"]
    card = listed["smollm2-135m:latest"]
    assert card.size == local_model.size_bytes and card.details and card.details.family == "llama"
    assert card.details.parameter_size == f"{local_model.parameter_count / 1e6:.2f}M"
    shown = client.show("smollm2-135m")
    assert shown.template == local_model.chat_template and "<|im_start|>" in (shown.template or "")
    assert shown.modelinfo and shown.modelinfo["general.parameter_count"] == local_model.parameter_count
    assert client.show("all-minilm").capabilities == ["embedding"]
    client.generate(model="alias:7b", prompt="", keep_alive="1m")  # an empty prompt loads it
    warm = {m.model: m for m in client.ps().models}["alias:7b"]
    assert warm.size == local_model.size_bytes and warm.size_vram == 0  # CPU: nothing in accelerator memory


def test_embed_is_minilm(real_url: str) -> None:
    client = ollama.Client(host=real_url)
    texts = ["The capital of France is Paris.", "Paris is France's capital city."]
    got = client.embed(model="all-minilm", input=texts)
    vectors = np.array(got.embeddings)
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors, MiniLMEmbedder()(texts), atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.8  # paraphrases
    assert len(client.embed(model="all-minilm", input="one").embeddings) == 1
    with pytest.raises(ollama.ResponseError) as err:
        client.embed(model="smollm2-135m", input="x")
    assert err.value.status_code == 400 and err.value.error == "this model does not support embeddings"


# -- the protocol, on the toy model ----------------------------------------------------------------


def test_generate_matches_local_inference(client: ollama.Client) -> None:
    resp = client.generate(model="hs-tiny", prompt="Hello", options=GREEDY)
    prompt = render_chat([("user", "Hello")])  # a plain generator gets the chat rendered with CHAT_TEMPLATE
    assert resp.done and resp.done_reason == "length"
    assert resp.response == get_model().generate(prompt, max_tokens=12).text
    assert resp.eval_count == 12 and resp.prompt_eval_count == get_model().count_tokens(prompt)


def test_generate_stream(client: ollama.Client) -> None:
    chunks = list(client.generate(model="hs-tiny", prompt="Hello", options=GREEDY, stream=True))
    *body, last = chunks
    assert all(not c.done for c in body) and len(body) == 12
    assert last.done and last.eval_count == 12 and last.eval_duration is not None
    whole = client.generate(model="hs-tiny", prompt="Hello", options=GREEDY)
    assert "".join(c.response or "" for c in body) == whole.response


def test_stream_is_ndjson(url: str) -> None:
    body = {"model": "hs-tiny", "prompt": "hi", "options": GREEDY}
    with httpx.stream("POST", f"{url}/api/generate", json=body) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [line for line in r.iter_lines() if line]
    assert len(lines) == 13 and all('"done":false' in line for line in lines[:-1])
    assert '"done":true' in lines[-1] and '"eval_count":12' in lines[-1]


def test_chat(client: ollama.Client) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    resp = client.chat(model="tiny-alias:7b", messages=messages, options=GREEDY)
    prompt = render_chat([(m["role"], m["content"]) for m in messages])
    assert resp.message.role == "assistant"
    assert resp.message.content == get_model().generate(prompt, max_tokens=12).text
    assert resp.prompt_eval_count == get_model().count_tokens(prompt)
    assert resp.model == "tiny-alias:7b"
    chunks = list(client.chat(model="hs-tiny", messages=messages, options=GREEDY, stream=True))
    assert "".join(c.message.content or "" for c in chunks) == resp.message.content
    assert chunks[-1].done and chunks[-1].done_reason == "length"


def test_list_and_show(client: ollama.Client) -> None:
    names = [m.model for m in client.list().models]
    assert names == ["hs-tiny:latest", "tiny-alias:7b"]  # a generator of its own: no embedding model
    model = client.list().models[0]
    assert model.size and model.size > 0 and model.details and model.details.parameter_size
    shown = client.show("hs-tiny")
    assert shown.template == CHAT_TEMPLATE and shown.capabilities == ["completion"]
    assert shown.modelinfo and shown.modelinfo["general.parameter_count"] == get_model().parameter_count


def test_ps_tracks_loaded_models_and_keep_alive(client: ollama.Client) -> None:
    client.generate(model="tiny-alias:7b", prompt="warm", options={"num_predict": 1}, keep_alive="2m")
    loaded = {m.model: m for m in client.ps().models}
    warm = loaded["tiny-alias:7b"]
    assert warm.size_vram is not None and warm.size_vram >= 0 and warm.size == get_model().size_bytes
    assert warm.expires_at is not None
    assert timedelta(0) < warm.expires_at - datetime.now(UTC) <= timedelta(minutes=2)
    client.generate(model="tiny-alias:7b", prompt="bye", options={"num_predict": 1}, keep_alive=0)
    assert "tiny-alias:7b" not in {m.model for m in client.ps().models}
    # An empty prompt only loads (or unloads) the model, as in Ollama.
    assert client.generate(model="tiny-alias:7b", prompt="", keep_alive=-1).done_reason == "load"
    forever = {m.model: m for m in client.ps().models}["tiny-alias:7b"].expires_at
    assert forever is not None and forever.year > 2100
    assert client.generate(model="tiny-alias:7b", prompt="", keep_alive=0).done_reason == "unload"
    assert "tiny-alias:7b" not in {m.model for m in client.ps().models}


@pytest.mark.parametrize("call", ["generate", "chat", "show", "stream"])
def test_unknown_model_is_404(client: ollama.Client, call: str) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        if call == "generate":
            client.generate(model="nope", prompt="x")
        elif call == "chat":
            client.chat(model="nope", messages=[{"role": "user", "content": "x"}])
        elif call == "show":
            client.show("nope")
        else:
            list(client.generate(model="nope", prompt="x", stream=True))
    assert err.value.status_code == 404
    assert err.value.error == 'model "nope" not found, try pulling it first'


def test_shell_metacharacters_round_trip(client: ollama.Client) -> None:
    resp = client.generate(model="hs-tiny", prompt=NASTY, raw=True, options=GREEDY)
    assert resp.prompt_eval_count == len(NASTY.encode("utf-8")) + 1  # raw: the prompt verbatim
    chat = client.chat(model="hs-tiny", messages=[{"role": "user", "content": NASTY}], options=GREEDY)
    assert chat.prompt_eval_count == get_model().count_tokens(render_chat([("user", NASTY)]))
    with pytest.raises(ollama.ResponseError) as err:  # echoed verbatim in the 404 message
        client.show(NASTY)
    assert err.value.error == f'model "{NASTY}" not found, try pulling it first'


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{not json", None), (b'{"prompt": "x"}', "model is required"),
     (b'{"model": "hs-tiny", "prompt": "x", "keep_alive": "soon"}', "invalid duration 'soon'"),
     (b'{"model": "hs-tiny", "prompt": "x", "options": {"temperature": "hot"}}', None)],
)
def test_bad_requests_are_400(url: str, body: bytes, message: str | None) -> None:
    r = httpx.post(f"{url}/api/generate", content=body)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error == message if message else error  # bad JSON: msgspec's own message


def test_version_and_root(url: str) -> None:
    assert httpx.get(f"{url}/api/version").json()["version"]
    assert httpx.get(url).text == "Ollama is running"


async def test_async_client_concurrent_streams(url: str) -> None:
    client = ollama.AsyncClient(host=url)

    async def run(prompt: str) -> str:
        parts = [c.response or "" async for c in await client.generate(
            model="hs-tiny", prompt=prompt, options=GREEDY, stream=True)]
        return "".join(parts)

    prompts = [f"prompt {i}" for i in range(6)]
    texts = await asyncio.gather(*(run(p) for p in prompts))
    assert texts == [get_model().generate(render_chat([("user", p)]), max_tokens=12).text for p in prompts]


class Gated:
    """A generator that blocks in its worker thread until the test opens the gate."""

    name = "gated"

    def __init__(self, fail: bool = False) -> None:
        self.started, self.gate, self.fail = threading.Event(), threading.Event(), fail

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        self.started.set()
        yield "o"
        if not self.gate.wait(timeout=30):
            raise TimeoutError("gate never opened")
        if self.fail:
            raise RuntimeError("boom")
        yield "k"

    def count_tokens(self, text: str) -> int:
        return len(text)


def test_busy_node_answers_503_and_keeps_serving() -> None:
    gen = Gated()
    with serve_asgi(create_node_app(gen, max_queue=1), "/api/version") as base, ThreadPoolExecutor(1) as pool:
        client = ollama.Client(host=base)
        first = pool.submit(client.generate, model="gated", prompt="x")
        assert gen.started.wait(timeout=10)
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model="gated", prompt="y")
        assert err.value.status_code == 503
        assert err.value.error == "server busy, please try again. maximum pending requests exceeded"
        # Inference runs off the event loop: the node still answers while the model is busy.
        assert httpx.get(f"{base}/api/tags").status_code == 200
        gen.gate.set()
        done = first.result(timeout=10)
        assert done.response == "ok" and done.done_reason == "stop" and done.eval_count == 2
        assert client.generate(model="gated", prompt="z").response == "ok"  # the place was freed


def test_error_mid_stream_arrives_in_band() -> None:
    gen = Gated(fail=True)
    gen.gate.set()
    with serve_asgi(create_node_app(gen), "/api/version") as base:
        client = ollama.Client(host=base)
        with pytest.raises(ollama.ResponseError, match="boom"):
            list(client.generate(model="gated", prompt="x", stream=True))
        with pytest.raises(ollama.ResponseError) as err:
            client.generate(model="gated", prompt="x")
        assert err.value.status_code == 500 and err.value.error == "boom"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 300.0), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), (0, 0.0), ("0", 0.0),
     (42, 42.0), ("-1", math.inf), (-1, math.inf), ("-5m", math.inf)],
)
def test_parse_keep_alive(value: float | str | None, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


def test_client_disconnect_frees_the_queue_place() -> None:
    gen = Gated()
    with serve_asgi(create_node_app(gen, max_queue=1), "/api/version") as base:
        with httpx.stream("POST", f"{base}/api/generate", json={"model": "gated", "prompt": "x"}) as r:
            assert '"response":"o"' in next(r.iter_lines())
        # The client hung up mid-answer; once the worker notices, the place must be free again.
        gen.gate.set()
        client = ollama.Client(host=base)
        deadline = time.monotonic() + 10
        while True:  # poll: the server learns of the disconnect asynchronously
            try:
                assert client.generate(model="gated", prompt="y").response == "ok"
                break
            except ollama.ResponseError as exc:
                if exc.status_code != 503 or time.monotonic() > deadline:
                    raise


def test_serve_node_runs_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    tiny: SimpleGenerator = get_model()  # the toy satisfies the node's plain protocol (checked by mypy)
    node.serve_node("127.0.0.1", 0, generator=tiny, log_level="warning")
    assert isinstance(seen["app"], Starlette)
    assert (seen["host"], seen["port"], seen["log_level"]) == ("127.0.0.1", 0, "warning")
