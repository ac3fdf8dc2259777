"""Hostile input from issue #10, each refused with a 4xx naming the field (never a 5xx): numbers out
of range, a 400-digit integer, overrides nested 1,000 deep, ``max_tokens`` past every pool's window;
``tried`` de-duplicated and error headers kept short. The fuzz harness (tests/fuzz) covers the rest."""

from __future__ import annotations

import json

import msgspec
import pytest

from homeskillet.covenant import RANGES, CovenantBook, check_window
from homeskillet.errors import (
    MAX_HEADER_BYTES,
    MAX_TRIED,
    BadRequest,
    CovenantError,
    HomeskilletError,
    NoPoolError,
    Unmet,
    header_text,
)
from homeskillet.gateway import admit_query, error_reply
from homeskillet.ingress.decoding import decode_json
from homeskillet.wire import Offer, Query

BOOK = CovenantBook.load()


def admit(body: bytes | dict[str, object], offers: list[Offer] | None = None) -> HomeskilletError | None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        admit_query(decode_json(Query, data, "the query", whole="query"), BOOK, offers or [], max_prompt_bytes=1 << 20)
    except HomeskilletError as exc:
        return exc
    return None


@pytest.mark.parametrize(("overrides", "term"), [
    ({"qos": {"hard_deadline_ms": int("9" * 400)}}, "qos.hard_deadline_ms"),
    ({"qos": {"hard_deadline_ms": 3_600_001}}, "qos.hard_deadline_ms"),
    ({"qos": {"latency_target_ms": 0}}, "qos.latency_target_ms"),
    ({"qos": {"priority": 101}}, "qos.priority"),
    ({"fallback": {"queue_max_wait_ms": 10**12}}, "fallback.queue_max_wait_ms"),
    ({"fallback": {"queue_max_wait_ms": 30_001}, "qos": {"hard_deadline_ms": 30_000}}, "fallback.queue_max_wait_ms"),
    ({"cost": {"max_usd_per_request": 1e308}}, "cost.max_usd_per_request"),
    ({"cost": {"tenant_budget_usd": 0}}, "cost.tenant_budget_usd"),
    ({"resources": {"min_vram_mb": -1}}, "resources.min_vram_mb"),
    ({"cache": {"ttl_s": 1e12}}, "cache.ttl_s"),
    ({"strategy": {"hedge": {"min_samples": 10**9}}}, "strategy.hedge.min_samples"),
    ({"max_tokens": 32769}, "max_tokens"),
    ({"qos": {"priority": "high"}}, "qos.priority"),
    ({"qos": [1, 2]}, "qos"),
    ({"resources": {"nope": 1}}, "resources.nope"),
    (json.loads('{"a":' * 13 + "1" + "}" * 13), "a.a.a.a.a.a.a.a.a.a.a.a"),  # deeper than any term
])
def test_an_override_out_of_range_is_a_422_naming_the_term(overrides: dict[str, object], term: str) -> None:
    err = admit({"prompt": "hi", "overrides": overrides})
    assert isinstance(err, CovenantError) and err.status == 422, err
    assert err.term == term, err.message


def test_every_numeric_term_has_a_documented_range() -> None:
    assert {"qos.hard_deadline_ms", "fallback.queue_max_wait_ms", "qos.priority", "max_tokens",
            "cost.max_usd_per_request"} <= set(RANGES)


@pytest.mark.parametrize("nested", [b'{"a":' * 1000 + b"1" + b"}" * 1000, b"[" * 1000 + b"1" + b"]" * 1000])
def test_overrides_nested_a_thousand_deep_are_a_4xx(nested: bytes) -> None:
    err = admit(b'{"prompt":"hi","overrides":' + nested + b"}")
    assert isinstance(err, BadRequest | CovenantError) and 400 <= err.status < 500 and err.term, err


def test_a_400_digit_number_anywhere_is_a_4xx() -> None:
    for field in (b"max_tokens", b"temperature", b"v"):
        err = admit(b'{"prompt":"hi","' + field + b'":' + b"9" * 400 + b"}")
        assert err is not None and 400 <= err.status < 500 and err.term, (field, err)


def test_a_shorter_deadline_caps_the_templates_queue_wait() -> None:
    cov = BOOK.resolve(Query(prompt="hi", overrides={"qos": {"hard_deadline_ms": 5000}}))
    assert cov.fallback.queue_max_wait_ms == 5000  # the template's 30 s would outlive the deadline


def test_max_tokens_past_every_window_is_a_422() -> None:
    small = Offer(pool="p/small", provider="echo", pool_class="local", models=["smollm2-135m"], context_tokens=2048)
    big = Offer(pool="p/big", provider="echo", pool_class="local", models=["*"], context_tokens=8192)
    err = admit({"prompt": "hi", "covenant": "smollm2-135m", "max_tokens": 32768}, [small])
    assert isinstance(err, CovenantError) and err.term == "max_tokens" and "2048" in err.message
    # the largest window counts
    assert admit({"prompt": "hi", "covenant": "smollm2-135m", "max_tokens": 4096}, [small, big]) is None
    unknown = msgspec.structs.replace(small, context_tokens=0)
    # no window stated: nothing to refuse on
    assert admit({"prompt": "hi", "covenant": "smollm2-135m", "max_tokens": 32768}, [unknown]) is None
    check_window(BOOK.get("smollm2-135m"), [])  # no pool quoting: nothing to check against


def test_tried_is_deduplicated_and_the_header_stays_short() -> None:
    tried = tuple(f"step local: context_tokens (window {i % 3})" for i in range(196))
    err = NoPoolError("smollm2-135m", [Unmet("context_tokens", "window 2048")], tried)
    assert err.tried == tuple(dict.fromkeys(tried)) and len(err.tried) == 3
    assert error_reply(err).tried == list(err.tried)
    many = NoPoolError("x", [], tuple(f"pool {i}: down" for i in range(500)))
    assert len(many.tried) == MAX_TRIED and many.tried[-1].startswith("… and")
    assert len(header_text(many.message).encode()) <= MAX_HEADER_BYTES
    assert header_text("line one\r\nNats-Service-Error: forged") == "line one  Nats-Service-Error: forged"
