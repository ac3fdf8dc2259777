"""Covenants: templates from ``covenants/*.toml``, per-query overrides, consistency checks.

A covenant is the contract one fragment is served under. Templates are strict (an unknown key,
a wrong type or inconsistent terms is an error naming the file and the key); a query may override
any term, and the merged covenant is checked again. ``fallback_chain`` turns the covenant into the
ordered steps the orchestrator walks: primary pool class, then the fallback steps.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec

from .errors import CovenantError, UnknownCovenant
from .strict import StrictError, convert_strict, load_toml
from .wire import Covenant, Query

__all__ = [
    "DECOMPOSERS",
    "FUSIONS",
    "POOL_CLASSES",
    "PROVIDERS",
    "CovenantBook",
    "Step",
    "default_covenant_dir",
    "default_pool_class",
    "fallback_chain",
    "load_covenant",
    "merge_overrides",
    "parse_step",
    "validate",
]

# Pool classes: hosted.ai's tiers, then the other kinds of capacity.
POOL_CLASSES = ("standard", "premium", "preemptible", "dedicated", "marketplace", "tpu", "api", "local")
PROVIDERS = ("echo", "mlx", "hostedai", "vastai", "ionet", "runpod", "tpu", "openrouter", "ollama")
FUSIONS = ("ordered", "reduce")  # how parts become one answer (alternatives are fused by the ensemble's fuse)
DECOMPOSERS = ("questions", "long_context")  # analysis steps a covenant may list in strategy.decompose


class Step(msgspec.Struct, frozen=True):
    """One step of a fallback chain. kind: class | provider | pool | any | queue | fail."""

    kind: str
    value: str = ""

    def __str__(self) -> str:
        return self.value if self.kind in ("class",) else (f"{self.kind}:{self.value}" if self.value else self.kind)


def parse_step(text: str) -> Step:
    if text in ("queue", "fail", "any"):
        return Step(text)
    if text in POOL_CLASSES:
        return Step("class", text)
    kind, _, value = text.partition(":")
    if kind == "provider" and value in PROVIDERS:
        return Step("provider", value)
    if kind == "pool" and value:
        return Step("pool", value)
    raise ValueError(
        f"fallback step {text!r} names no known pool class or provider "
        f"(classes: {', '.join(POOL_CLASSES)}; or provider:<{'|'.join(PROVIDERS)}>, pool:<name>, queue, fail)"
    )


def default_pool_class(cov: Covenant) -> str:
    """The design's default policy: latency-sensitive → dedicated; under 8 GB and preemptible
    allowed → preemptible; otherwise standard."""
    if cov.qos.latency_target_ms <= 500:
        return "dedicated"
    if cov.resources.min_vram_mb < 8192 and cov.qos.preemptible:
        return "preemptible"
    return "standard"


def fallback_chain(cov: Covenant) -> list[Step]:
    """Primary pool class, then the fallback steps, without repeats; always ends in fail."""
    return list(_chain(cov.resources.pool_class or default_pool_class(cov), tuple(cov.fallback.steps)))


@functools.lru_cache(maxsize=1024)
def _chain(primary: str, steps: tuple[str, ...]) -> tuple[Step, ...]:
    # Memoised on exactly what a chain is made of: every query walks one (twice with map/reduce).
    chain: list[Step] = [Step("class", primary)]
    for text in steps:
        step = parse_step(text)
        if step not in chain:
            chain.append(step)
        if step.kind == "fail":
            break
    if chain[-1].kind != "fail":
        chain.append(Step("fail"))
    return tuple(chain)


def validate(cov: Covenant, source: str) -> Covenant:
    """Check the terms are consistent with each other; return the covenant with its id set."""

    def bad(key: str, why: str) -> CovenantError:
        return CovenantError(f"{source}: {key}: {why}", term=key)

    r, q, c, f = cov.resources, cov.qos, cov.cost, cov.fallback
    if not r.model.strip():
        raise bad("resources.model", "must name a model")
    if r.min_vram_mb < 0 or r.min_tflops < 0:
        raise bad("resources.min_vram_mb" if r.min_vram_mb < 0 else "resources.min_tflops", "must be ≥ 0")
    if r.max_vram_mb is not None and r.max_vram_mb < r.min_vram_mb:
        raise bad("resources.max_vram_mb", f"{r.max_vram_mb} is below min_vram_mb {r.min_vram_mb}")
    if r.pool_class is not None and r.pool_class not in POOL_CLASSES:
        raise bad("resources.pool_class", f"{r.pool_class!r} is not one of {', '.join(POOL_CLASSES)}")
    if q.latency_target_ms <= 0:
        raise bad("qos.latency_target_ms", "must be > 0")
    if q.hard_deadline_ms < q.latency_target_ms:
        raise bad("qos.hard_deadline_ms", f"{q.hard_deadline_ms} is below latency_target_ms {q.latency_target_ms}")
    if not 0 <= q.priority <= 100:
        raise bad("qos.priority", f"{q.priority} is outside 0..100")
    for key in ("max_usd_per_request", "max_usd_per_hour", "tenant_budget_usd"):
        value = getattr(c, key)
        if value is not None and value <= 0:
            raise bad(f"cost.{key}", f"{value} must be > 0 (omit it for no limit)")
    for text in f.steps:
        try:
            parse_step(text)
        except ValueError as exc:
            raise bad("fallback.steps", str(exc)) from None
    if "fail" in f.steps and f.steps.index("fail") != len(f.steps) - 1:
        raise bad("fallback.steps", "'fail' must be the last step")
    if f.queue_max_wait_ms <= 0:
        raise bad("fallback.queue_max_wait_ms", "must be > 0")
    if cov.fusion not in FUSIONS:
        raise bad("fusion", f"{cov.fusion!r} is not one of {', '.join(FUSIONS)}")
    _validate_strategy(cov, bad)
    if not 1 <= cov.max_tokens <= 32768:
        raise bad("max_tokens", f"{cov.max_tokens} is outside 1..32768")
    terms = msgspec.json.encode(msgspec.structs.replace(cov, covenant_id=""))
    return msgspec.structs.replace(cov, covenant_id=f"{cov.name}@{hashlib.sha256(terms).hexdigest()[:10]}")


def _steps(texts: list[str], key: str, bad: Callable[[str, str], CovenantError]) -> None:
    for text in texts:
        try:
            step = parse_step(text)
        except ValueError as exc:
            raise bad(key, str(exc)) from None
        if step.kind in ("queue", "fail"):
            raise bad(key, f"{text!r} is a fallback step; name pool classes, provider:<x> or pool:<name> here")


def _validate_strategy(cov: Covenant, bad: Callable[[str, str], CovenantError]) -> None:
    """The strategy tables must name known steps and sensible numbers."""
    st, cache = cov.strategy, cov.cache
    for name in st.decompose:
        if name not in DECOMPOSERS:
            raise bad("strategy.decompose", f"{name!r} is not one of {', '.join(DECOMPOSERS)}")
    ens, cas, hedge, mr = st.ensemble, st.cascade, st.hedge, st.map_reduce
    _steps(ens.members, "strategy.ensemble.members", bad)
    _steps(cas.tiers, "strategy.cascade.tiers", bad)
    if st.serve == "ensemble" and len(ens.members) < 2:
        raise bad("strategy.ensemble.members", "serve = 'ensemble' needs at least two member steps")
    if len(set(ens.members)) != len(ens.members):
        raise bad("strategy.ensemble.members", "each member step may appear once")
    if ens.fuse == "teacher" and ens.teacher not in ens.members:
        raise bad("strategy.ensemble.teacher", f"{ens.teacher!r} must be one of the members {ens.members}")
    if st.serve == "cascade" and len(cas.tiers) < 2:
        raise bad("strategy.cascade.tiers", "serve = 'cascade' needs at least two tiers, cheapest first")
    if not 0.0 <= cas.threshold <= 1.0:
        raise bad("strategy.cascade.threshold", f"{cas.threshold} is outside 0..1")
    if not 1 <= cas.samples <= 8:
        raise bad("strategy.cascade.samples", f"{cas.samples} is outside 1..8")
    if hedge.min_samples < 1:
        raise bad("strategy.hedge.min_samples", "must be ≥ 1")
    if mr.chunk_tokens < 0 or (0 < mr.chunk_tokens < 32):
        raise bad("strategy.map_reduce.chunk_tokens", f"{mr.chunk_tokens}: use 0 (from the pools) or ≥ 32")
    if not 2 <= mr.max_chunks <= 1024:
        raise bad("strategy.map_reduce.max_chunks", f"{mr.max_chunks} is outside 2..1024")
    last = -1.0
    for i, r in enumerate(st.route):
        if not 0.0 <= r.min_complexity <= 1.0 or r.min_complexity <= last:
            raise bad(f"strategy.route[{i}].min_complexity",
                      f"{r.min_complexity}: must be within 0..1 and rise from one route to the next")
        if not r.covenant.strip():
            raise bad(f"strategy.route[{i}].covenant", "must name a covenant template")
        last = r.min_complexity
    if cache.threshold is not None and not 0.0 < cache.threshold <= 1.0:
        raise bad("cache.threshold", f"{cache.threshold} is outside (0, 1]")
    if cache.ttl_s <= 0:
        raise bad("cache.ttl_s", "must be > 0")


def _convert(data: dict[str, Any], source: str) -> Covenant:
    try:
        cov = convert_strict(data, Covenant, source)
    except StrictError as exc:
        raise CovenantError(str(exc)) from None
    return validate(cov, source)


def load_covenant(path: str | Path) -> Covenant:
    """Load one template; its name is the file's stem unless the file says otherwise."""
    p = Path(path)
    try:
        data = load_toml(p)
    except StrictError as exc:
        raise CovenantError(str(exc)) from None
    data.setdefault("name", p.stem)
    return _convert(data, str(p))


def default_covenant_dir() -> Path:
    env = os.environ.get("HOMESKILLET_COVENANTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "covenants"


def merge_overrides(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``, tables merged key by key (how a query's overrides meet a template)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (merge_overrides(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict)
                    else value)
    return out


class CovenantBook:
    """The templates a deployment serves, looked up by name or by model."""

    def __init__(self, covenants: Iterable[Covenant]) -> None:
        self._by_name = {c.name: c for c in covenants}
        self._by_model: dict[str, Covenant] = {}
        # A template named after its model wins the lookup by model.
        for c in sorted(self._by_name.values(), key=lambda c: c.name != c.resources.model):
            self._by_model.setdefault(c.resources.model, c)
        for c in self._by_name.values():
            for r in c.strategy.route:
                if r.covenant not in self._by_name:
                    raise CovenantError(f"covenant {c.name!r}: strategy.route names unknown covenant {r.covenant!r}; "
                                        f"known: {', '.join(self.names())}", term="strategy.route")

    @classmethod
    def load(cls, directory: str | Path | None = None) -> CovenantBook:
        d = Path(directory) if directory else default_covenant_dir()
        files = sorted(d.glob("*.toml"))
        if not files:
            raise CovenantError(f"{d}: no covenant templates (*.toml) found; set HOMESKILLET_COVENANTS")
        return cls(load_covenant(p) for p in files)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Covenant:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownCovenant(
                f"unknown covenant {name!r}; known: {', '.join(self.names())}", term="covenant"
            ) from None

    def resolve(self, query: Query) -> Covenant:
        """The covenant a query is served under: its template, then its overrides."""
        if query.covenant:
            base = self.get(query.covenant)
        elif query.model:
            base = self._by_model.get(query.model) or self._by_name.get(query.model)  # type: ignore[assignment]
            if base is None and "+" in query.model:  # a LoRA adapter: its base model's covenant, this model
                base = self._by_model.get(query.model.partition("+")[0])
                if base is not None:
                    query = msgspec.structs.replace(query, overrides=merge_overrides(
                        {"resources": {"model": query.model}}, dict(query.overrides or {})))
            if base is None:
                raise UnknownCovenant(
                    f"no covenant serves model {query.model!r}; known models: "
                    f"{', '.join(sorted(self._by_model))}",
                    term="model",
                )
        elif "default" in self._by_name:
            base = self._by_name["default"]
        else:
            raise UnknownCovenant("the query names neither a covenant nor a model", term="covenant")
        over: dict[str, Any] = dict(query.overrides or {})
        if query.max_tokens is not None:
            over["max_tokens"] = query.max_tokens
        if not over:
            return base
        merged = merge_overrides(msgspec.to_builtins(msgspec.structs.replace(base, covenant_id="")), over)
        merged.pop("covenant_id", None)
        return _convert(merged, f"covenant {base.name!r} with the query's overrides")
