"""The fuzz harness's kit: input strategies for every decoder, the pure drivers, and the tally.

Inputs are mostly *almost right* (a real query, reservation, chat request, tool call, covenant or
scenario file with one or a few values made hostile: huge or negative numbers, 400-digit integers,
wrong types, unknown keys, deep nesting, control characters), plus raw bytes and truncated JSON.
Almost-right inputs get past the JSON decoder into the validation behind it, where the 5xx hid.

A driver feeds one input to the real decoder and validation and classifies the result:
``accepted``, ``rejected`` (a ``HomeskilletError`` with a 4xx status naming a field) or a crash
(anything else, which the tests fail on). The counts per decoder go to ``TALLY`` and are printed
at the end of the session (``make fuzz`` puts them in docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from mcp.client.client import Client
from nats.aio.client import Client as NATS

from homeskillet.auth import Authenticator, AuthSettings
from homeskillet.covenant import CovenantBook, load_covenant
from homeskillet.errors import MAX_HEADER_BYTES, HomeskilletError, header_text
from homeskillet.gateway import admit_query, error_reply
from homeskillet.ingress.decoding import decode_json
from homeskillet.ingress.mcp_tools import McpTools, QuoteArgs
from homeskillet.ingress.openai_api import to_query
from homeskillet.ingress.openai_wire import ChatCompletionRequest
from homeskillet.kvstate import key_token
from homeskillet.replay.scenario import default_scenario_dir, load_scenario
from homeskillet.reservations import validate_reserve
from homeskillet.runtime import Runtime
from homeskillet.wire import Offer, Query, ReserveRequest

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
PRINCIPAL = Authenticator(AuthSettings()).authenticate(None, tenant_hint="fuzz")  # auth off: the MCP caller
FULL = int(os.environ.get("HS_FUZZ_EXAMPLES", "0"))  # make fuzz: 10000 inputs per decoder; the suite: a share
BATCH = 20 if FULL else 6  # inputs per hypothesis example: spreads the engine's own cost per example
PURE_INPUTS = FULL or 60
E2E_INPUTS = int(os.environ.get("HS_FUZZ_E2E", "0")) or (max(1000, FULL // 10) if FULL else 8)
MAX_PROMPT_BYTES = 1 << 20


def fuzz_settings(inputs: int) -> settings:
    """Enough examples of ``BATCH`` inputs each for ``inputs``; random in a full run, derandomized
    (the same inputs every time) in the suite."""
    return settings(max_examples=-(-inputs // BATCH), deadline=None, database=None, derandomize=not FULL,
                    suppress_health_check=list(HealthCheck))


def batch(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, min_size=BATCH, max_size=BATCH)


# --- the world the end-to-end share runs in (built by conftest's ``world`` fixture) ---------------

TENANT = "fuzz"


@dataclass
class World:
    loop: asyncio.AbstractEventLoop
    rt: Runtime
    http: httpx.AsyncClient
    nc: NATS
    mcp: Client

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        """Run ``coro`` on the world's loop (its own thread) and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def state(self) -> tuple[Any, ...]:
        """What a rejected input must leave as it was: the books, budgets, rate-limit windows,
        reservations, kept results and parked fragments."""
        rt = self.rt
        report = await rt.ledger_report()
        budgets = rt.orchestrator.budgets
        budget = await budgets.status(TENANT) if budgets is not None else None
        limits = rt.gateway.limits
        window = (await limits.cell.read(key_token(TENANT)))[0] if limits is not None else None
        return (report.spent_usd, report.held_usd, report.settlements, budget, window,
                {k: v.status for k, v in rt.reservations.table.items()}, len(rt.gateway.results),
                len(rt.orchestrator.parked))



# --- the tally -----------------------------------------------------------------------------------


@dataclass
class Row:
    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    unservable: int = 0  # admitted, and no pool there is can serve it: 503 no_pool / 504 deadline_exceeded
    server_errors: int = 0  # any other 5xx, or anything that is not a HomeskilletError
    seconds: float = 0.0
    crashes: list[str] = field(default_factory=list)


TALLY: dict[str, Row] = {}


def record(decoder: str, outcome: str, seconds: float, crash: str = "") -> None:
    row = TALLY.setdefault(decoder, Row())
    row.inputs += 1
    row.seconds += seconds
    if outcome == "accepted":
        row.accepted += 1
    elif outcome == "rejected":
        row.rejected += 1
    elif outcome == "unservable":
        row.unservable += 1
    else:
        row.server_errors += 1
        if len(row.crashes) < 5:
            row.crashes.append(crash)


def check_rejection(exc: HomeskilletError) -> str:
    """'' when ``exc`` is a proper rejection: 4xx, names a field, fits its envelopes; else why not."""
    if not 400 <= exc.status < 500:
        return f"status {exc.status}: {exc.code}: {exc.message[:300]}"
    if not exc.term:
        return f"a {exc.status} naming no field: {exc.message[:300]}"
    if len(header_text(exc.message).encode()) > MAX_HEADER_BYTES:
        return "header text over the limit"
    msgspec.json.encode(error_reply(exc))  # the body must encode
    return ""


def drive(decoder: str, run: Callable[..., object], *args: Any) -> None:
    """Run one input through ``run(*args)``, classify and record it; raise AssertionError on a crash."""
    t0 = time.perf_counter()
    try:
        run(*args)
    except HomeskilletError as exc:
        why = check_rejection(exc)
        record(decoder, "crash" if why else "rejected", time.perf_counter() - t0, why)
        assert not why, f"{decoder}: {why}"
        return
    except Exception as exc:  # this is what the harness looks for
        record(decoder, "crash", time.perf_counter() - t0, f"{type(exc).__name__}: {exc!s:.300}")
        raise AssertionError(f"{decoder}: {type(exc).__name__} escaped validation") from exc
    record(decoder, "accepted", time.perf_counter() - t0)


# --- values --------------------------------------------------------------------------------------

HOSTILE_TEXT = ["", " ", "\r\n", "a\r\nNats-Service-Error: x", "\x00", "\u2028", "é" * 300, "x" * 5000,
                "../../etc/passwd", "$(rm -rf /)", "%s%n", "null", "{}", "*", ">", "hs.query", "🙂" * 50]
EXTREME_INTS = [0, -1, 1, 2, 31, 32, 100, 101, 255, 256, 1024, 8192, 32768, 32769, 3_600_000, 3_600_001,
                2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**12,
                int("9" * 400), -int("9" * 400)]
EXTREME_FLOATS = [0.0, -0.0, -1.0, 0.5, 1.0, 1.0000001, 2.0, 2.5, 1e-300, 5e-324, 1e9, 1.0000001e9, 1e308,
                  -1e308, 1.7976931348623157e308]

ints = st.one_of(st.integers(-5, 70_000), st.sampled_from(EXTREME_INTS),
                 st.integers(15, 400).map(lambda k: 10**k))
floats = st.one_of(st.floats(-10.0, 10.0, allow_nan=False), st.sampled_from(EXTREME_FLOATS),
                   st.floats(allow_nan=False, allow_infinity=False))
texts = st.one_of(st.text(max_size=24), st.sampled_from(HOSTILE_TEXT),
                  st.text(string.ascii_lowercase + "-_./:", min_size=1, max_size=16))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
keys = st.one_of(st.sampled_from(["qos", "resources", "cost", "fallback", "strategy", "cache", "max_tokens",
                                  "name", "a", "prompt", "kind", ""]), st.text(max_size=8))
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                        max_leaves=12)


def number_or(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a plausible value, often an extreme number, sometimes anything at all."""
    return st.one_of(good, good, ints, floats, scalars, any_json)


def text_or(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(good, good, good, texts, scalars)


def table(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A table with any subset of ``fields`` (and now and then an unknown key), or sometimes not a table."""
    t = st.fixed_dictionaries({}, optional={**fields, "zz_unknown": scalars})
    return st.one_of(t, t, t, t, any_json)


STEPS = ["standard", "premium", "preemptible", "dedicated", "marketplace", "tpu", "api", "local", "queue", "fail",
         "any", "provider:echo", "provider:nope", "pool:echo/standard", "pool:", "bogus"]
steps = st.lists(text_or(st.sampled_from(STEPS)), max_size=6)
MODELS = ["gemma-2b", "mistral-7b", "qwen-14b", "qwen-32b", "qwen-70b", "hs-tiny", "nope"]
COVENANTS = ["default", "auto", "cascade", "ensemble", "hedged", "gemma-2b", "mistral-7b", "qwen-14b",
             "qwen-32b", "qwen-70b", "hs-tiny", "nope"]

covenant_terms = {
    "resources": table({
        "model": text_or(st.sampled_from(MODELS)), "min_vram_mb": number_or(st.integers(0, 100_000)),
        "max_vram_mb": number_or(st.integers(0, 100_000) | st.none()), "min_tflops": number_or(st.floats(0, 2000)),
        "accelerator": text_or(st.sampled_from(["any", "gpu", "tpu", "cpu"])),
        "gpu_models": st.lists(texts, max_size=3), "pool_class": text_or(st.sampled_from(STEPS[:8]) | st.none()),
    }),
    "qos": table({
        "latency_target_ms": number_or(st.integers(1, 100_000)),
        "hard_deadline_ms": number_or(st.integers(1, 4_000_000)),
        "priority": number_or(st.integers(-1, 101)), "preemptible": st.booleans() | scalars,
    }),
    "cost": table({k: number_or(st.floats(0, 100, allow_nan=False) | st.none())
                   for k in ("max_usd_per_request", "max_usd_per_hour", "tenant_budget_usd")}),
    "fallback": table({"steps": steps, "queue_max_wait_ms": number_or(st.integers(0, 100_000)),
                       "degrade_to": st.lists(text_or(st.sampled_from(MODELS)), max_size=3)}),
    "strategy": table({
        "decompose": st.lists(text_or(st.sampled_from(["questions", "long_context"])), max_size=3),
        "serve": text_or(st.sampled_from(["single", "ensemble", "cascade"])),
        "ensemble": table({"members": steps, "fuse": text_or(st.sampled_from(["vote", "confidence", "teacher"])),
                           "teacher": text_or(st.sampled_from(STEPS))}),
        "cascade": table({"tiers": steps, "threshold": number_or(st.floats(0, 1)),
                          "samples": number_or(st.integers(0, 9))}),
        "hedge": table({"enabled": st.booleans(), "percentile": number_or(st.sampled_from([50, 90, 95, 99])),
                        "min_samples": number_or(st.integers(0, 50))}),
        "map_reduce": table({"chunk_tokens": number_or(st.integers(0, 5000)),
                             "max_chunks": number_or(st.integers(0, 2000))}),
        "route": st.lists(table({"min_complexity": number_or(st.floats(0, 1)),
                                 "covenant": text_or(st.sampled_from(COVENANTS))}), max_size=3),
    }),
    "cache": table({"mode": text_or(st.sampled_from(["off", "exact", "semantic"])),
                    "threshold": number_or(st.floats(0, 1) | st.none()),
                    "ttl_s": number_or(st.floats(0, 1e7, allow_nan=False))}),
    "max_tokens": number_or(st.integers(1, 40_000)),
    "fusion": text_or(st.sampled_from(["ordered", "reduce"])),
    "negotiation": text_or(st.sampled_from(["quotes", "cfp"])),
    "name": texts,
    "covenant_id": scalars,
}
overrides = st.one_of(st.none(), st.fixed_dictionaries({}, optional=covenant_terms), any_json)

messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": text_or(st.sampled_from(["system", "user", "assistant", "tool", "developer"])),
                           "content": text_or(st.text(min_size=1, max_size=40))}),
    any_json), max_size=4)



def doc(core: dict[str, st.SearchStrategy[Any]], rest: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Half the time the core fields are there (plausible, so validation runs deep); else any subset."""
    return st.one_of(st.fixed_dictionaries(core, optional=rest), st.fixed_dictionaries({}, optional={**core, **rest}))


QUERY_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "messages": messages,
    "covenant": text_or(st.sampled_from(COVENANTS)),
    "model": text_or(st.sampled_from(MODELS)),
    "overrides": overrides,
    "max_tokens": number_or(st.integers(1, 64)),
    "temperature": number_or(st.floats(0, 2)),
    "tenant": text_or(st.just("fuzz")),
    "query_id": text_or(st.text(string.ascii_letters + string.digits, min_size=1, max_size=20)),
    "trace_id": texts,
    "kind": text_or(st.just("query")),
    "v": number_or(st.just(1)),
    "zz_unknown": any_json,
}
query_doc = doc({"prompt": text_or(st.text(min_size=1, max_size=60))}, QUERY_FIELDS)

reserve_doc = st.fixed_dictionaries({}, optional={
    "provider": text_or(st.sampled_from(["auto", "echo", "hostedai", "vastai", "nope"])),
    "compute_type": text_or(st.sampled_from(["gpu", "tpu", "cpu"])),
    "gpu_model": texts, "count": number_or(st.integers(0, 2000)), "duration_s": number_or(st.integers(0, 10**7)),
    "max_cost_per_hr": number_or(st.floats(0, 100, allow_nan=False)), "enable_hybrid": st.booleans() | scalars,
    "fallback_providers": st.lists(texts, max_size=20) | scalars, "model": text_or(st.sampled_from(MODELS)),
    "pool_id": texts, "min_vram_mb": number_or(st.integers(0, 100_000)),
    "max_vram_mb": number_or(st.integers(0, 100_000)), "min_tflops": number_or(st.floats(0, 2000)),
    "preemptible": st.booleans() | scalars, "local_port": st.booleans() | scalars,
    "tenant": text_or(st.just("fuzz")), "metadata": st.dictionaries(texts, texts, max_size=3) | any_json,
    "zz_unknown": any_json,
})

part = st.fixed_dictionaries({"type": text_or(st.just("text"))}, optional={"text": text_or(st.text(max_size=30))})
user = st.fixed_dictionaries({"role": st.just("user"), "content": st.text(min_size=1, max_size=40)})
chat_doc = doc({
    "model": text_or(st.sampled_from(COVENANTS + MODELS)),
    "messages": st.one_of(st.lists(user, min_size=1, max_size=2), st.lists(st.one_of(
        st.fixed_dictionaries({"role": text_or(st.sampled_from(["system", "developer", "user", "assistant"])),
                               "content": text_or(st.text(min_size=1, max_size=40)) | st.lists(part, max_size=3)}),
        any_json), max_size=4)),
}, {
    "stream": st.booleans() | scalars, "max_tokens": number_or(st.integers(1, 64) | st.none()),
    "max_completion_tokens": number_or(st.integers(1, 64) | st.none()),
    "temperature": number_or(st.floats(0, 2) | st.none()), "top_p": number_or(st.floats(0, 1)),
    "n": number_or(st.just(1)), "stop": st.none() | texts | st.lists(texts, max_size=3),
    "covenant": text_or(st.sampled_from(COVENANTS) | st.none()), "overrides": overrides,
    "tenant": text_or(st.just("fuzz") | st.none()), "stream_options": table({"include_usage": st.booleans()}),
    "zz_unknown": any_json,
})


def _nested(n: int, kind: str, name: bytes) -> bytes:
    inner = b'{"a":' * n + b"1" + b"}" * n if kind == "object" else b"[" * n + b"1" + b"]" * n
    return b'{"prompt":"hi","' + name + b'":' + inner + b"}"


deep_json = st.builds(_nested, st.integers(1, 3000) | st.sampled_from([64, 999, 1000, 1001, 3000]),
                      st.sampled_from(["object", "array"]),
                      st.sampled_from([b"overrides", b"messages", b"metadata", b"prompt", b"zz_unknown"]))
big_literal = st.builds(lambda f, k: b'{"prompt":"hi","' + f + b'":' + b"9" * k + b"}",
                        st.sampled_from([b"max_tokens", b"temperature", b"count", b"duration_s", b"n"]),
                        st.integers(18, 4000))


# --- mutations: a valid document with a few values replaced (cheap to draw: most of the inputs) ---


def struct_paths(tp: Any, prefix: str = "") -> list[str]:
    """Every field path of a Struct type, nested Structs (and lists of them, as ``.0``) included."""
    import typing

    out: list[str] = []
    hints = typing.get_type_hints(tp)
    for name in tp.__struct_fields__:
        path = f"{prefix}{name}"
        out.append(path)
        sub = hints[name]
        args = typing.get_args(sub)
        inner = args[0] if typing.get_origin(sub) is list and args else sub
        if isinstance(inner, type) and issubclass(inner, msgspec.Struct):
            out += struct_paths(inner, f"{path}.0." if inner is not sub else f"{path}.")
    return out


ODD_VALUES: list[Any] = [None, True, False, [], {}, [1, 2], {"a": 1}, [[[]]], {"qos": {"priority": 1}},
                         [{"min_complexity": 0.5, "covenant": "default"}], ["standard", "fail"], ["queue"],
                         {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": {"l": {"m": 1}}}}}}}}}}}}},
                         [[[[[[[[[[[[[[1]]]]]]]]]]]]]]]


def put(doc: Any, path: str, new: Any) -> Any:
    """``doc`` with the value at dotted ``path`` replaced (tables made where missing)."""
    if not path:
        return new
    head, _, rest = path.partition(".")
    if head.isdigit():
        items = doc if isinstance(doc, list) else []
        i = int(head)
        if i < len(items):
            items[i] = put(items[i], rest, new)
        else:
            items.append(put({}, rest, new))
        return items
    table_ = doc if isinstance(doc, dict) else {}
    table_[head] = put(table_.get(head), rest, new)
    return table_


HOSTILE_VALUES: list[Any] = [*EXTREME_INTS, *EXTREME_FLOATS, *HOSTILE_TEXT, *ODD_VALUES, *STEPS, *MODELS, *COVENANTS]


def _steps(r: random.Random, k: int = 3) -> list[str]:
    return r.sample(["standard", "premium", "preemptible", "dedicated", "local", "provider:echo",
                     "pool:echo/standard"], r.randint(1, k))


# Values within range (though not always consistent with each other), by the field's name: half the
# changes use them, so many inputs are admitted and served with unusual but valid terms.
PLAUSIBLE: dict[str, Callable[[random.Random], Any]] = {
    "priority": lambda r: r.randint(0, 100), "hard_deadline_ms": lambda r: r.randint(1000, 3_600_000),
    "latency_target_ms": lambda r: r.randint(1, 5000), "queue_max_wait_ms": lambda r: r.randint(1, 30_000),
    "max_tokens": lambda r: r.choice([1, 2, r.randint(1, 64), r.randint(1, 9000)]),
    "max_completion_tokens": lambda r: r.randint(1, 64), "temperature": lambda r: r.uniform(0, 2),
    "min_vram_mb": lambda r: r.choice([0, r.randint(0, 100_000)]), "max_vram_mb": lambda r: r.randint(0, 200_000),
    "min_tflops": lambda r: r.uniform(0, 2000), "threshold": lambda r: r.uniform(0, 1),
    "samples": lambda r: r.randint(1, 8), "min_samples": lambda r: r.randint(1, 100),
    "chunk_tokens": lambda r: r.choice([0, r.randint(32, 5000)]), "max_chunks": lambda r: r.randint(2, 1024),
    "ttl_s": lambda r: r.uniform(0.001, 1e6), "max_usd_per_request": lambda r: r.uniform(1e-7, 10),
    "max_usd_per_hour": lambda r: r.uniform(0.01, 100), "tenant_budget_usd": lambda r: r.uniform(1e-7, 100),
    "steps": lambda r: [*_steps(r), r.choice(["fail", "queue", "local"])], "members": _steps, "tiers": _steps,
    "serve": lambda r: r.choice(["single", "ensemble", "cascade"]), "mode": lambda r: r.choice(["off", "exact"]),
    "fuse": lambda r: r.choice(["vote", "confidence", "teacher"]), "teacher": lambda r: r.choice(_steps(r)),
    "percentile": lambda r: r.choice([50, 90, 95, 99]), "enabled": lambda r: r.random() < 0.5,
    "preemptible": lambda r: r.random() < 0.5, "stream": lambda r: r.random() < 0.5, "n": lambda r: 1,
    "pool_class": lambda r: r.choice(["standard", "premium", "preemptible", "dedicated", "local"]),
    "accelerator": lambda r: r.choice(["any", "gpu", "cpu"]), "fusion": lambda r: r.choice(["ordered", "reduce"]),
    "negotiation": lambda r: r.choice(["quotes", "cfp"]), "degrade_to": lambda r: r.sample(MODELS[:6], 1),
    "decompose": lambda r: r.sample(["questions", "long_context"], r.randint(0, 2)),
    "model": lambda r: r.choice(MODELS[:6]), "covenant": lambda r: r.choice(COVENANTS[:-1]),
    "count": lambda r: r.randint(1, 4), "duration_s": lambda r: r.randint(60, 86400),
    "max_cost_per_hr": lambda r: r.uniform(0, 100), "provider": lambda r: r.choice(["auto", "echo"]),
    "compute_type": lambda r: r.choice(["gpu", "cpu"]), "include_usage": lambda r: r.random() < 0.5,
    "top_p": lambda r: r.uniform(0, 1), "seed": lambda r: r.randint(0, 2**31), "user": lambda r: "someone",
    "prompt": lambda r: r.choice(["a question?", "one. two? three?", "x " * r.randint(1, 3000)]),
    "content": lambda r: r.choice(["hello", "what is 2+2? and 3+3?", "y " * r.randint(1, 2000)]),
}


def _value(rng: random.Random, path: str = "") -> Any:
    plausible = PLAUSIBLE.get(path.rsplit(".", 1)[-1])
    if plausible is not None and rng.random() < 0.5:
        return plausible(rng)
    match rng.randrange(6):
        case 0:
            return rng.randrange(-2, 40_000)
        case 1:
            return rng.uniform(-1.0, 2.0)
        case 2:
            return "".join(rng.choice(string.printable) for _ in range(rng.randrange(10)))
    return rng.choice(HOSTILE_VALUES)


def mutated(bases: list[Any], paths: list[str]) -> st.SearchStrategy[Any]:
    """One of ``bases`` (valid documents) with 1–3 values at ``paths`` replaced, or deleted. The
    choices come from one drawn seed: cheap to draw, and as varied as a PRNG (hypothesis's own
    choices lean to the simplest values, so a batch would repeat itself)."""
    encoded = [json.dumps(b) for b in bases]

    def apply(seed: int) -> Any:
        rng = random.Random(seed)
        doc = json.loads(rng.choice(encoded))
        for _ in range(rng.randint(1, 3)):
            path = rng.choice(paths)
            head, _, last = path.rpartition(".")
            parent = doc
            for part in head.split(".") if head else []:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if rng.random() < 0.2 and isinstance(parent, dict):
                parent.pop(last, None)
            else:
                doc = put(doc, path, _value(rng, path))
        return doc

    return st.integers(0, 2**63).map(apply)


COVENANT_PATHS = [p for p in struct_paths(__import__("homeskillet.wire", fromlist=["Covenant"]).Covenant)
                  if p not in ("name", "covenant_id")]
VALID_QUERIES: list[dict[str, Any]] = [
    {"prompt": "what is the capital of France?", "tenant": "fuzz"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
     "covenant": "mistral-7b", "tenant": "fuzz", "max_tokens": 16},
    {"prompt": "one. two? three?", "model": "qwen-14b", "tenant": "fuzz",
     "overrides": {"qos": {"priority": 90, "hard_deadline_ms": 20000}, "fallback": {"steps": ["premium", "fail"]}}},
    {"prompt": "summarise this", "covenant": "default", "tenant": "fuzz", "temperature": 0.5,
     "overrides": {"cost": {"max_usd_per_request": 0.5}, "fallback": {"queue_max_wait_ms": 1000}}},
]
QUERY_PATHS = [*(f for f in struct_paths(Query) if f not in ("overrides",)), "messages.0.role", "messages.1.content",
               *(f"overrides.{p}" for p in COVENANT_PATHS), "overrides", "overrides.zz_unknown", "zz_unknown"]
VALID_RESERVES: list[dict[str, Any]] = [
    {"provider": "auto", "compute_type": "gpu", "count": 1, "duration_s": 3600, "tenant": "fuzz"},
    {"provider": "echo", "model": "gemma-2b", "min_vram_mb": 1024, "max_cost_per_hr": 5.0, "tenant": "fuzz",
     "fallback_providers": ["echo"], "metadata": {"region": "us-east"}},
]
RESERVE_PATHS = [*struct_paths(ReserveRequest), "metadata.region", "fallback_providers.0", "zz_unknown"]
VALID_CHATS: list[dict[str, Any]] = [
    {"model": "gemma-2b", "messages": [{"role": "user", "content": "hello there"}]},
    {"model": "ignored", "covenant": "mistral-7b", "max_tokens": 8, "temperature": 0.2, "stream": True,
     "stream_options": {"include_usage": True}, "overrides": {"qos": {"priority": 90}},
     "messages": [{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "one two three"}]}]},
]
CHAT_PATHS = [*struct_paths(ChatCompletionRequest), "messages.0.role", "messages.0.content",
              "messages.1.content.0.type",
              *(f"overrides.{p}" for p in COVENANT_PATHS), "zz_unknown"]


def to_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")


def body(doc: st.SearchStrategy[Any], mutants: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Mostly a valid document with values replaced (cheap), often one built field by field; sometimes
    cut short, raw bytes, a huge literal, deep nesting, or a prompt over the limit."""
    encoded = doc.map(to_bytes)
    mutant = mutants.map(to_bytes)
    truncated = st.tuples(mutant, st.integers(0, 200)).map(lambda t: t[0][: t[1]])
    return st.one_of(mutant, mutant, mutant, mutant, mutant, mutant, mutant, mutant, encoded, encoded, truncated,
                     st.binary(max_size=64), big_literal, deep_json,
                     st.just(b'{"prompt":"' + b"x" * (MAX_PROMPT_BYTES + 1) + b'"}'))


query_body = body(query_doc, mutated(VALID_QUERIES, QUERY_PATHS))
reserve_body = body(reserve_doc, mutated(VALID_RESERVES, RESERVE_PATHS))
chat_body = body(chat_doc, mutated(VALID_CHATS, CHAT_PATHS))


# --- data files: mutations of the shipped ones ---------------------------------------------------

TOML_VALUES = ["nan", "inf", "-inf", "1e999", "9" * 19, "9" * 400, "-1", "0", "0.0", "1e308", '""', '"x"',
               "true", "[]", "[1, 2]", "{}", "{ a = 1 }", "[" * 60 + "]" * 60, "{ a = " * 40 + "1" + " }" * 40,
               '"\\u0000"', "1979-05-27T07:32:00Z", "[[1]]", "100000000000", "3600001", "32769", "-0.5", "2.0"]
TOML_LINES = ["zz_unknown = 1", "[zz_table]", "[[classes]]", "[[pools]]", "[qos]", "[fallback]", "= 1",
              "max_tokens = 99999999999999999999", "\x00", "[[faults]]", "kind = \"nats_kill\""]


def _files(directory: Path) -> list[str]:
    return [p.read_text() for p in sorted(directory.glob("*.toml"))]


COVENANT_FILES = _files(ROOT / "covenants")
SCENARIO_FILES = _files(default_scenario_dir())


def _toml_value(rng: random.Random) -> str:
    match rng.randrange(5):
        case 0:
            return str(rng.choice([rng.randrange(-5, 100_000), rng.choice(EXTREME_INTS)]))
        case 1:
            return repr(rng.uniform(-2.0, 2.0))
        case 2:
            return json.dumps("".join(rng.choice(string.printable) for _ in range(rng.randrange(12))))
    return rng.choice(TOML_VALUES)


def mutated_toml(sources: list[str]) -> st.SearchStrategy[str]:
    """A shipped file with 1–3 lines changed: a value made hostile (most often), a line added or
    deleted, or stray text; choices from one drawn seed (see ``mutated``)."""

    def apply(seed: int) -> str:
        rng = random.Random(seed)
        lines = rng.choice(sources).splitlines()
        for _ in range(rng.randint(1, 3)):
            op = rng.randrange(8)
            valued = [i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
            if op < 5 and valued:
                i = rng.choice(valued)
                lines[i] = lines[i].split("=", 1)[0] + "= " + _toml_value(rng)
            elif op == 5:
                lines.insert(rng.randrange(len(lines) + 1), rng.choice(TOML_LINES))
            elif op == 6 and lines:
                del lines[rng.randrange(len(lines))]
            else:
                stray = "".join(rng.choice(string.printable) for _ in range(rng.randrange(20)))
                lines.insert(rng.randrange(len(lines) + 1), stray)
        return "\n".join(lines)

    return st.integers(0, 2**63).map(apply)


class FileDriver:
    """Writes each mutated file to one temporary path and loads it with the real loader."""

    def __init__(self, suffix: str) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="hs-fuzz-")
        self.path = Path(self.dir.name) / f"fuzzed{suffix}"

    def write(self, text: str) -> Path:
        self.path.write_text(text, encoding="utf-8", errors="surrogatepass")
        return self.path


# --- the pure drivers: the decode + validation every ingress shares ------------------------------


@dataclass
class Pure:
    book: CovenantBook
    offers: list[Offer]

    def query(self, data: bytes, whole: str = "query") -> None:
        q = decode_json(Query, data, "the query", whole=whole)
        admit_query(q, self.book, self.offers, max_prompt_bytes=MAX_PROMPT_BYTES)

    def reserve(self, data: bytes) -> None:
        validate_reserve(decode_json(ReserveRequest, data, "the reservation request", whole="reservation request"))

    def chat(self, data: bytes) -> None:
        req = decode_json(ChatCompletionRequest, data)
        admit_query(to_query(req), self.book, self.offers, max_prompt_bytes=MAX_PROMPT_BYTES)

    def tool(self, tools: McpTools, name: str, args: Any) -> None:
        spec = tools.specs.get(name)
        if spec is None:
            return  # an unknown tool is a JSON-RPC error (-32602): the end-to-end test checks it
        value = spec.decode(args if isinstance(args, dict) else {"arguments": args}, PRINCIPAL)
        if isinstance(value, QuoteArgs):
            admit_query(value.to_query(PRINCIPAL.tenant), self.book, self.offers, max_prompt_bytes=MAX_PROMPT_BYTES)
        elif isinstance(value, ReserveRequest):
            validate_reserve(value)

    def admits(self, check: Callable[[], object]) -> bool:
        """Whether the shared decode + validation lets this input through (it raises a 4xx if not)."""
        try:
            check()
        except HomeskilletError:
            return False
        return True

    def covenant_file(self, files: FileDriver, text: str) -> None:
        load_covenant(files.write(text))

    def scenario_file(self, files: FileDriver, text: str) -> None:
        load_scenario(files.write(text), self.book)


# --- MCP tool calls: a tool name and its arguments (JSON-RPC may carry NaN and ±Infinity too) ----

mcp_numbers = st.sampled_from([float("nan"), float("inf"), float("-inf")])
_query_args = {k: v for k, v in QUERY_FIELDS.items() if k in ("messages", "covenant", "model", "overrides")}
query_args = doc({"prompt": text_or(st.text(min_size=1, max_size=60))}, {
                                                 **_query_args, "reservation_id": texts, "tenant": texts,
                                                 "temperature": number_or(st.floats(0, 2)) | mcp_numbers,
                                                 "max_tokens": number_or(st.integers(1, 64)) | mcp_numbers,
                                                 "zz_unknown": scalars})
_mcp_queries = [{k: v for k, v in q.items() if k != "tenant"} for q in VALID_QUERIES]
_mcp_query_paths = [p for p in QUERY_PATHS if p.split(".")[0] in
                    ("prompt", "messages", "covenant", "model", "overrides", "max_tokens", "temperature", "tenant",
                     "zz_unknown")] + ["reservation_id"]
_mcp_reserves = [{k: v for k, v in r.items() if k != "tenant"} for r in VALID_RESERVES]
tool_call = st.one_of(
    st.tuples(st.sampled_from(["query", "quote"]), mutated(_mcp_queries, _mcp_query_paths)),
    st.tuples(st.sampled_from(["query", "quote"]), mutated(_mcp_queries, _mcp_query_paths)),
    st.tuples(st.sampled_from(["query", "quote"]), mutated(_mcp_queries, _mcp_query_paths)),
    st.tuples(st.just("reserve"), mutated(_mcp_reserves, RESERVE_PATHS)),
    st.tuples(st.just("reserve"), mutated(_mcp_reserves, RESERVE_PATHS)),
    st.tuples(st.sampled_from(["query", "quote"]), query_args),
    st.tuples(st.just("reserve"), reserve_doc),
    st.tuples(st.sampled_from(["reservation", "release", "allocation_metrics"]),
              st.fixed_dictionaries({}, optional={"reservation_id": texts, "zz_unknown": scalars})),
    st.tuples(st.sampled_from(["pools", "nope", ""]), st.dictionaries(keys, scalars, max_size=2)),
    st.tuples(st.sampled_from(["query", "quote", "reserve", "reservation", "release", "allocation_metrics",
                               "pools"]), any_json),
)
