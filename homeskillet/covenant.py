"""Covenants: templates from ``covenants/*.toml``, per-query overrides, consistency checks.

A covenant is the contract one fragment is served under. Templates are strict (an unknown key,
a wrong type or inconsistent terms is an error naming the file and the key); a query may override
any term, and the merged covenant is checked again. ``fallback_chain`` turns the covenant into the
ordered steps the orchestrator walks: primary pool class, then the fallback steps.

Every numeric term has a range (``RANGES``, also in docs/architecture.md), checked by ``validate``
before anything is held, charged or parked: a query's overrides get the same checks as a file.
``check_window`` refuses a ``max_tokens`` larger than the context window of every pool serving the
covenant's models (when those pools state their window).
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
from .strict import StrictError, check_values, convert_strict, load_toml
from .wire import Covenant, Fallback, Offer, Query

__all__ = [
    "DECOMPOSERS",
    "FUSIONS",
    "POOL_CLASSES",
    "PROVIDERS",
    "RANGES",
    "CovenantBook",
    "Step",
    "check_window",
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

MAX_DEADLINE_MS = 3_600_000  # one hour: past it a caller has long gone, and a parked query with it
MAX_USD = 1e9
MAX_TOKENS = 32_768
# The documented range of every numeric term (inclusive unless the text says otherwise).
RANGES: dict[str, str] = {
    "resources.min_vram_mb": "0..16777216 (16 TiB)",
    "resources.max_vram_mb": "min_vram_mb..16777216",
    "resources.min_tflops": "0..1e7, finite",
    "qos.latency_target_ms": "1..hard_deadline_ms",
    "qos.hard_deadline_ms": f"latency_target_ms..{MAX_DEADLINE_MS} (one hour)",
    "qos.priority": "0..100",
    "cost.max_usd_per_request": "over 0, up to 1e9, finite (omit it for no limit)",
    "cost.max_usd_per_hour": "over 0, up to 1e9, finite (omit it for no limit)",
    "cost.tenant_budget_usd": "over 0, up to 1e9, finite (omit it for no limit)",
    "fallback.queue_max_wait_ms": "1..hard_deadline_ms",
    "strategy.cascade.threshold": "0..1",
    "strategy.cascade.samples": "1..8",
    "strategy.hedge.min_samples": "1..100000",
    "strategy.map_reduce.chunk_tokens": "0 (from the pools) or 32..1048576",
    "strategy.map_reduce.max_chunks": "2..1024",
    "strategy.route[].min_complexity": "0..1, rising from one route to the next",
    "cache.threshold": "over 0, up to 1",
    "cache.ttl_s": "over 0, up to 2592000 (30 days)",
    "max_tokens": f"1..{MAX_TOKENS}, and no more than the largest context window among the pools serving the model",
}


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
    """Check every term is within its range (``RANGES``) and the terms are consistent with each
    other; return the covenant with its id set."""

    def bad(key: str, why: str) -> CovenantError:
        return CovenantError(f"{source}: {key}: {why} (range: {RANGES.get(key, 'see docs')})"
                             if key in RANGES else f"{source}: {key}: {why}", term=key)

    r, q, c, f = cov.resources, cov.qos, cov.cost, cov.fallback
    if not r.model.strip():
        raise bad("resources.model", "must name a model")
    if not 0 <= r.min_vram_mb <= 16 << 20:
        raise bad("resources.min_vram_mb", f"{r.min_vram_mb} is out of range")
    if r.max_vram_mb is not None and not r.min_vram_mb <= r.max_vram_mb <= 16 << 20:
        raise bad("resources.max_vram_mb", f"{r.max_vram_mb} is below min_vram_mb {r.min_vram_mb} or too large")
    if not 0 <= r.min_tflops <= 1e7:  # False for NaN too
        raise bad("resources.min_tflops", f"{r.min_tflops} is out of range")
    if r.pool_class is not None and r.pool_class not in POOL_CLASSES:
        raise bad("resources.pool_class", f"{r.pool_class!r} is not one of {', '.join(POOL_CLASSES)}")
    if not 1 <= q.hard_deadline_ms <= MAX_DEADLINE_MS:
        raise bad("qos.hard_deadline_ms", f"{q.hard_deadline_ms} is out of range")
    if not 1 <= q.latency_target_ms <= q.hard_deadline_ms:
        raise bad("qos.latency_target_ms", f"{q.latency_target_ms} must be > 0 and within hard_deadline_ms "
                  f"{q.hard_deadline_ms}")
    if not 0 <= q.priority <= 100:
        raise bad("qos.priority", f"{q.priority} is outside 0..100")
    for key in ("max_usd_per_request", "max_usd_per_hour", "tenant_budget_usd"):
        value = getattr(c, key)
        if value is not None and not 0 < value <= MAX_USD:  # False for NaN too
            raise bad(f"cost.{key}", f"{value} is out of range")
    for text in f.steps:
        try:
            parse_step(text)
        except ValueError as exc:
            raise bad("fallback.steps", str(exc)) from None
    if "fail" in f.steps and f.steps.index("fail") != len(f.steps) - 1:
        raise bad("fallback.steps", "'fail' must be the last step")
    if not 1 <= f.queue_max_wait_ms <= q.hard_deadline_ms:
        raise bad("fallback.queue_max_wait_ms", f"{f.queue_max_wait_ms} must be > 0 and within hard_deadline_ms "
                  f"{q.hard_deadline_ms}: a parked query is answered by its deadline")
    if cov.fusion not in FUSIONS:
        raise bad("fusion", f"{cov.fusion!r} is not one of {', '.join(FUSIONS)}")
    _validate_strategy(cov, bad)
    if cov.distill is not None:
        _validate_distill(cov, bad)
    if not 1 <= cov.max_tokens <= MAX_TOKENS:
        raise bad("max_tokens", f"{cov.max_tokens} is out of range")
    terms = msgspec.json.encode(msgspec.structs.replace(cov, covenant_id=""))
    return msgspec.structs.replace(cov, covenant_id=f"{cov.name}@{hashlib.sha256(terms).hexdigest()[:10]}")


def check_window(cov: Covenant, offers: Iterable[Offer]) -> None:
    """Refuse a ``max_tokens`` no pool serving the covenant's models could hold: over the largest
    context window among them. Pools that state no window (0), or none quoting, pass."""
    models = {cov.resources.model, *cov.fallback.degrade_to}
    windows = [o.context_tokens for o in offers if "*" in o.models or not models.isdisjoint(o.models)]
    if not windows or min(windows) <= 0:
        return
    if cov.max_tokens > max(windows):
        raise CovenantError(f"max_tokens: {cov.max_tokens} is more than the largest context window "
                            f"({max(windows)} tokens) among the pools serving {cov.resources.model!r}; "
                            f"ask for at most {max(windows)}", term="max_tokens")


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
    if not 1 <= hedge.min_samples <= 100_000:
        raise bad("strategy.hedge.min_samples", f"{hedge.min_samples} is out of range")
    if not (mr.chunk_tokens == 0 or 32 <= mr.chunk_tokens <= 1 << 20):
        raise bad("strategy.map_reduce.chunk_tokens", f"{mr.chunk_tokens}: use 0 (from the pools) or 32..1048576")
    if not 2 <= mr.max_chunks <= 1024:
        raise bad("strategy.map_reduce.max_chunks", f"{mr.max_chunks} is outside 2..1024")
    if len(st.route) > 16:
        raise bad("strategy.route", f"{len(st.route)} routes; at most 16")
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
    if not 0 < cache.ttl_s <= 30 * 86400:  # False for NaN too
        raise bad("cache.ttl_s", f"{cache.ttl_s} is out of range")


def _validate_distill(cov: Covenant, bad: Callable[[str, str], CovenantError]) -> None:
    """The ``[distill]`` table: shares and bars are fractions, the student a model name, counts positive."""
    d = cov.distill
    assert d is not None
    if not d.student.strip() or d.student == cov.resources.model:
        raise bad("distill.student", f"{d.student!r}: name the student model (not the teacher {cov.resources.model!r})")
    _steps([d.student_step], "distill.student_step", bad)
    for key in ("shadow_share", "check_share", "confidence_threshold", "semantic_threshold", "promote_at",
                "canary_share", "rollback_below"):
        value = getattr(d, key)
        if not 0.0 <= value <= 1.0:
            raise bad(f"distill.{key}", f"{value} is outside 0..1")
    if not 0.0 <= d.validation_split < 1.0:
        raise bad("distill.validation_split", f"{d.validation_split} is outside [0, 1)")
    if d.rollback_below > d.promote_at:
        raise bad("distill.rollback_below", f"{d.rollback_below} is above promote_at {d.promote_at}")
    for key, low, high in (("max_examples", 1, 1_000_000), ("training_frequency", 1, 1_000_000),
                           ("train_steps", 1, 100_000), ("lora_rank", 1, 256), ("batch_size", 1, 1024),
                           ("canary_min_samples", 2, 100_000)):
        value = getattr(d, key)
        if not low <= value <= high:
            raise bad(f"distill.{key}", f"{value} is outside {low}..{high}")
    if not 0.0 < d.learning_rate < 1.0:
        raise bad("distill.learning_rate", f"{d.learning_rate} is outside (0, 1)")


def _convert(data: dict[str, Any], source: str, whole: str) -> Covenant:
    try:
        cov = convert_strict(data, Covenant, source)
    except StrictError as exc:
        raise CovenantError(str(exc), term=exc.key or whole) from None
    return validate(cov, source)


def load_covenant(path: str | Path) -> Covenant:
    """Load one template; its name is the file's stem unless the file says otherwise."""
    p = Path(path)
    try:
        data = load_toml(p)
    except StrictError as exc:
        raise CovenantError(str(exc), term=exc.key or str(p)) from None
    data.setdefault("name", p.stem)
    fb, qos = data.get("fallback", {}), data.get("qos", {})
    if isinstance(fb, dict) and isinstance(qos, dict) and "queue_max_wait_ms" not in fb:
        # A template that states a short deadline and no queue wait waits at most its deadline.
        deadline = qos.get("hard_deadline_ms")
        if type(deadline) is int and 0 < deadline < Fallback().queue_max_wait_ms:
            data["fallback"] = {**fb, "queue_max_wait_ms": deadline}
    return _convert(data, str(p), str(p))


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
        self._resolved: dict[tuple[str, bytes], Covenant] = {}  # (template, overrides) -> covenant, FIFO
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

    def all(self) -> list[Covenant]:
        return [self._by_name[n] for n in self.names()]

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def get(self, name: str) -> Covenant:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownCovenant(
                f"unknown covenant {name!r}; known: {', '.join(self.names())}", term="covenant"
            ) from None

    def check(self, query: Query, offers: Iterable[Offer]) -> Covenant:
        """The query's covenant, checked before anything is held: its overrides within range, on its
        template and on every template its routes may move it to, and ``max_tokens`` within the
        pools' windows. Raises what ``resolve`` raises (404 unknown covenant, 422 naming the term)."""
        cov = self.resolve(query)
        offers = list(offers)
        check_window(cov, offers)
        if not query.model:
            for r in cov.strategy.route:
                if r.covenant != cov.name:
                    check_window(self.resolve(msgspec.structs.replace(query, covenant=r.covenant)), offers)
        return cov

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
        source = f"covenant {base.name!r} with the query's overrides"
        try:
            check_values(over, source, path="")
        except StrictError as exc:
            raise CovenantError(str(exc), term=exc.key or "overrides") from None
        # The gateway checks a query's covenant before admitting it and the orchestrator resolves
        # it again: remember the last few (the same overrides tend to come again and again).
        key = (base.name, msgspec.json.encode(over))
        cov = self._resolved.get(key)
        if cov is None:
            merged = merge_overrides(msgspec.to_builtins(msgspec.structs.replace(base, covenant_id="")), over)
            merged.pop("covenant_id", None)
            _cap_queue_wait(merged, over)
            cov = _convert(merged, source, "overrides")
            if len(self._resolved) >= 256:
                self._resolved.pop(next(iter(self._resolved)), None)
            self._resolved[key] = cov
        return cov


def _cap_queue_wait(merged: dict[str, Any], over: dict[str, Any]) -> None:
    """An override that shortens the hard deadline and says nothing of the queue wait gets the
    template's wait cut to the new deadline, rather than a refusal for a term it never named."""
    fb, qos, fb_over = merged.get("fallback"), merged.get("qos"), over.get("fallback")
    if isinstance(fb_over, dict) and "queue_max_wait_ms" in fb_over:
        return
    if not (isinstance(fb, dict) and isinstance(qos, dict)):
        return
    wait, deadline = fb.get("queue_max_wait_ms"), qos.get("hard_deadline_ms")
    if type(wait) is int and type(deadline) is int and 0 < deadline < wait:
        fb["queue_max_wait_ms"] = deadline
