"""``echo/*`` pools: an instant, deterministic engine for tests and overhead benchmarks.

It answers with the prompt it was given. ``delay_ms`` (and ``ms_per_token``) model a slower pool
so failover and scheduling can be rehearsed without any real compute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from ..sims.base import count_tokens
from .base import Connector, InferRequest, InferResult, register

__all__ = ["EchoConnector"]


@register("echo")
class EchoConnector(Connector):
    unsupported = {
        "quote": "echo pools are priced by their pool spec",
        "allocate": "echo pools have nothing to allocate",
        "release": "echo pools have nothing to release",
        "metrics": "echo pools keep no allocation metrics",
        "preemptible": "echo pools are never preempted",
        "bid": "echo pools have a fixed price",
    }

    def __init__(self, *, delay_ms: float = 0.0, ms_per_token: float = 0.0) -> None:
        self.delay_ms, self.ms_per_token = delay_ms, ms_per_token
        self.executed = 0  # strikes actually run (the idempotency tests count these)

    def _text(self, req: InferRequest) -> str:
        words = req.prompt.split()
        return "echo: " + " ".join(words[: max(1, req.max_tokens)])

    async def infer(self, req: InferRequest) -> InferResult:
        t0 = time.perf_counter()
        self.executed += 1
        text = self._text(req)
        completion = count_tokens(text)
        wait = self.delay_ms + self.ms_per_token * completion
        if wait > 0:
            await asyncio.sleep(wait / 1000.0)
        return InferResult(
            text=text,
            model=req.model,
            prompt_tokens=count_tokens(req.prompt),
            completion_tokens=completion,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        result = await self.infer(req)
        for word in result.text.split(" "):
            yield word + " "
