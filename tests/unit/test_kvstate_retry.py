"""Bounded, retried shared-state operations (kvstate.retry_transient)."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest

from homeskillet.errors import StateUnavailable
from homeskillet.kvstate import retry_transient


async def test_a_transient_failure_is_retried_until_it_answers() -> None:
    calls = 0

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise nats.errors.NoRespondersError
        if calls == 2:
            await asyncio.Event().wait()  # a dead leader: never answers; the op timeout ends it
        return "ok"

    assert await retry_transient("t/k", op, op_timeout_s=0.05, patience_s=5) == "ok"
    assert calls == 3


async def test_a_real_refusal_is_not_retried() -> None:
    async def op() -> None:
        raise nats.js.errors.KeyWrongLastSequenceError

    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await retry_transient("t/k", op, op_timeout_s=0.05, patience_s=5)


async def test_no_quorum_past_patience_is_a_retryable_503() -> None:
    async def op() -> None:
        raise nats.js.errors.ServiceUnavailableError

    with pytest.raises(StateUnavailable) as err:
        await retry_transient("hs-ledger/acme", op, op_timeout_s=0.05, patience_s=0.2)
    assert err.value.status == 503 and err.value.retryable and "hs-ledger/acme" in err.value.message
