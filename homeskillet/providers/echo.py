"""``echo/*`` pools: a deterministic engine for tests and benchmarks, not a model.

It answers with the prompt it was given ("echo: <first max_tokens words>"). Options model the
things strategies react to, all seeded so a run can be repeated:

- ``delay_ms``, ``ms_per_token``: a slower pool;
- ``tail_p``, ``tail_ms``, ``tail_alpha``: a heavy latency tail: with probability ``tail_p`` a
  strike also waits ``tail_ms`` × a Pareto(``tail_alpha``) draw (≥ 1), from a seeded RNG;
- ``quality``: the share of prompts this pool answers "right" (as a quality-1 pool would); the
  rest get a wrong answer. Which prompts are right is fixed per (seed, prompt), so a scenario
  says exactly which queries a cheap pool gets right;
- ``vary_wrong``: wrong answers differ from one strike to the next (so self-consistency across
  samples can notice them); right answers never vary;
- ``logprobs``: report a mean token log-probability whose confidence, exp(mean logprob), is drawn
  per (seed, prompt) from ``confidence_right`` or ``confidence_wrong`` (ranges that may overlap:
  how well confidence separates right from wrong is the scenario's choice, stated in the spec).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator

from ..sims.base import count_tokens
from .base import Connector, InferRequest, InferResult, register

__all__ = ["EchoConnector"]


def _unit(*parts: object) -> float:
    """A deterministic draw in [0, 1) from the parts."""
    digest = hashlib.blake2b("\x00".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


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

    def __init__(self, *, delay_ms: float = 0.0, ms_per_token: float = 0.0, seed: int = 0, tail_p: float = 0.0,
                 tail_ms: float = 0.0, tail_alpha: float = 1.5, quality: float = 1.0, vary_wrong: bool = False,
                 logprobs: bool = False, confidence_right: tuple[float, float] = (0.6, 0.99),
                 confidence_wrong: tuple[float, float] = (0.1, 0.55)) -> None:
        for name, p in (("tail_p", tail_p), ("quality", quality)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"echo option {name}={p} is outside 0..1")
        for name, (lo, hi) in (("confidence_right", confidence_right), ("confidence_wrong", confidence_wrong)):
            if not 0.0 < lo <= hi <= 1.0:
                raise ValueError(f"echo option {name}={[lo, hi]} must be [lo, hi] with 0 < lo ≤ hi ≤ 1")
        if tail_alpha <= 0:
            raise ValueError(f"echo option tail_alpha={tail_alpha} must be > 0")
        self.delay_ms, self.ms_per_token = delay_ms, ms_per_token
        self.seed, self.tail_p, self.tail_ms, self.tail_alpha = seed, tail_p, tail_ms, tail_alpha
        self.quality, self.vary_wrong, self.logprobs = quality, vary_wrong, logprobs
        self.confidence_right, self.confidence_wrong = tuple(confidence_right), tuple(confidence_wrong)
        self.rng = random.Random(seed)
        self.executed = 0  # strikes actually run (the idempotency tests count these)
        self.cancelled = 0  # strikes stopped mid-run (hedge losers)

    def right(self, prompt: str) -> bool:
        """Whether this pool answers ``prompt`` as a quality-1 pool would."""
        return self.quality >= 1.0 or _unit(self.seed, "quality", prompt) < self.quality

    def _text(self, req: InferRequest) -> str:
        words = req.prompt.split()
        text = "echo: " + " ".join(words[: max(1, req.max_tokens)])
        if self.right(req.prompt):
            return text
        tag = f"{self.rng.randrange(1 << 30):x}" if self.vary_wrong else f"{self.seed}"
        return f"{text} [wrong {tag}]"

    def _logprob(self, prompt: str) -> float | None:
        if not self.logprobs:
            return None
        lo, hi = self.confidence_right if self.right(prompt) else self.confidence_wrong
        return math.log(lo + (hi - lo) * _unit(self.seed, "confidence", prompt))

    def _wait_ms(self, completion: int) -> float:
        wait = self.delay_ms + self.ms_per_token * completion
        if self.tail_p > 0 and self.rng.random() < self.tail_p:
            wait += self.tail_ms * self.rng.paretovariate(self.tail_alpha)
        return wait

    async def infer(self, req: InferRequest) -> InferResult:
        t0 = time.perf_counter()
        self.executed += 1
        text = self._text(req)
        completion = count_tokens(text)
        wait = self._wait_ms(completion)
        if wait > 0:
            try:
                await asyncio.sleep(wait / 1000.0)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return InferResult(
            text=text,
            model=req.model,
            prompt_tokens=count_tokens(req.prompt),
            completion_tokens=completion,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
            logprob_mean=self._logprob(req.prompt),
        )

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        result = await self.infer(req)
        for word in result.text.split(" "):
            yield word + " "
