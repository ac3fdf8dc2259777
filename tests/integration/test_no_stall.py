"""No request can stall the process (issue #10, item 1): eight prompts just under the 1 MiB limit,
one of each hostile shape, are in flight over NATS while ``/healthz`` and a small query from
another tenant answer. A liveness check with generous limits, not a speed test: before the fix
the first of these prompts held the I/O loop for minutes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import nats
import pytest

from homeskillet.config import HttpSettings
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime

LIMIT = 1 << 20  # Settings.max_prompt_bytes
SIZE = LIMIT - 4096  # just under it


def _fill(unit: str, size: int = SIZE) -> str:
    return (unit * (size // len(unit.encode()) + 1))[: size // max(1, len(unit.encode()) // len(unit))]


SHAPES = {
    "one line of words": _fill("word "),
    "one long word": "a" * SIZE,
    "many lines": _fill("a line of text here\n"),
    "many questions": _fill("why? "),
    "questions, then text without one": "why? why? " + "a" * (SIZE - 10),
    "code-like": _fill("x = foo(a, b);\n"),
    "open calls": _fill("f("),
    "non-latin": _fill("漢字かな交じり文 "),
}


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    # A slow pool keeps the big queries in flight while the small ones are asked.
    pool = echo_pool(capacity=64, usd_per_mtok_in=0.001, options={"delay_ms": 1500.0})  # 1 MiB within $0.01
    async with start_runtime(nats_url, [pool], http=HttpSettings(listen="127.0.0.1:0")) as runtime:
        yield runtime


@pytest.mark.timeout(300)
async def test_healthz_and_another_tenant_answer_while_eight_1mib_prompts_are_in_flight(rt: Runtime,
                                                                                       nats_url: str) -> None:
    assert all(len(p.encode()) < LIMIT for p in SHAPES.values())
    assert rt.http is not None
    subject = f"{rt.settings.prefix}.query"
    nc = await nats.connect(nats_url)
    try:
        big = [asyncio.create_task(nc.request(subject, json.dumps({"prompt": p, "tenant": "big"}).encode(),
                                              timeout=240)) for p in SHAPES.values()]
        # In flight: every one has reached the gateway (its ingress task exists) before we ask.
        async with asyncio.timeout(60):
            while len(rt.ingress._tasks) < len(big):
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=rt.http.url, timeout=60) as http:
            health = await http.get("/healthz")
        small = await nc.request(subject, json.dumps({"prompt": "are you there?", "tenant": "small"}).encode(),
                                 timeout=60)
        still_running = sum(not t.done() for t in big)
        replies = await asyncio.gather(*big)
    finally:
        await nc.close()
    assert health.status_code == 200
    answer = json.loads(small.data)
    assert answer["kind"] == "answer" and answer["tenant"] == "small", answer
    assert still_running > 0, "every 1 MiB prompt was done before the small query was answered"
    for shape, reply in zip(SHAPES, replies, strict=True):
        body = json.loads(reply.data)
        assert body["kind"] == "answer", (shape, (reply.headers or {}).get("Nats-Service-Error"))
