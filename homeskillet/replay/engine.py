"""The ``replay`` engine: a connector that behaves like a scenario's fleet entry, for live replay.

Until a provider's own connector exists (each talks to its simulator over HTTP), live replay backs
a pool with this engine: it takes as long as the scenario's latency model says (start + per token,
lognormal jitter, a tail), fails and preempts at the scenario's rates from a seeded RNG, and obeys
the fault timeline the driver sets while the run goes (outage, latency spike, preemption storm).
It reports itself as the provider it stands for, so covenants' ``provider:<name>`` steps and the
report see the fleet as the scenario describes it.

Its answers come from the fleet entry's ``AnswerModel`` (``sims/answers.py``): the reference text
is what every simulator says for (model, prompt) (``sim_completion``, so a quality-1 pool of any
price gives the same answer), replaced by a wrong one on the prompts the model gets wrong, with the
model's mean token logprob when it reports logprobs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec

from ..errors import Preempted, ProviderError
from ..providers.base import Connector, InferRequest, InferResult, register
from ..sims.answers import AnswerModel
from ..sims.base import count_tokens, sim_completion

__all__ = ["ReplayEngine"]


@register("replay")
class ReplayEngine(Connector):
    unsupported = {
        "quote": "replay pools are priced by their pool spec",
        "allocate": "replay pools stand for an allocation that is already running",
        "release": "replay pools have nothing to release",
        "metrics": "replay pools keep no allocation metrics",
        "bid": "replay pools have a fixed price",
    }

    def __init__(self, *, simulates: str = "replay", seed: int = 0, start_ms: float = 50.0, ms_per_token: float = 10.0,
                 jitter_sigma: float = 0.2, tail_rate: float = 0.0, tail_factor: float = 5.0,
                 failure_rate: float = 0.0, preempt_rate: float = 0.0, answers: dict[str, Any] | None = None) -> None:
        vars(self)["provider"] = simulates  # the instance speaks for the provider it stands for
        self.rng = random.Random(seed)
        self.answers = msgspec.convert(answers or {}, AnswerModel)
        self.answer_rng = random.Random(f"{seed}:answers")  # wrong answers' variety; keeps latency draws apart
        self.start_ms, self.ms_per_token = start_ms, ms_per_token
        self.jitter_sigma, self.tail_rate, self.tail_factor = jitter_sigma, tail_rate, tail_factor
        self.failure_rate, self.preempt_rate = failure_rate, preempt_rate
        self.outage_until = 0.0  # monotonic seconds; the driver sets these from the fault timeline
        self.spike_until, self.spike_factor = 0.0, 1.0
        self._storm = asyncio.Event()
        self.storm_share = 0.0
        self.executed = self.failed = self.preempted = 0
        self.spans: list[tuple[float, float]] = []  # (start, end) of each infer, monotonic

    @property
    def busy_s(self) -> float:
        """Time spent inside infer: the pool's slots hold strikes only for this long."""
        return sum(end - start for start, end in self.spans)

    def storm(self, share: float) -> None:
        """Evict ``share`` of the strikes running now (a preemption storm)."""
        self.storm_share = share
        self._storm.set()
        self._storm = asyncio.Event()

    def _duration_s(self, tokens: int) -> float:
        ms = self.start_ms + self.ms_per_token * tokens
        if self.jitter_sigma > 0:
            ms *= self.rng.lognormvariate(0.0, self.jitter_sigma)
        if self.tail_rate > 0 and self.rng.random() < self.tail_rate:
            ms *= self.tail_factor
        if time.monotonic() < self.spike_until:
            ms *= self.spike_factor
        return ms / 1000.0

    async def _run(self, seconds: float) -> bool:
        """Sleep ``seconds``; False if a storm evicted this strike first."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            storm = self._storm
            try:
                await asyncio.wait_for(storm.wait(), left)
            except TimeoutError:
                return True
            if self.rng.random() < self.storm_share:
                return False
        return True

    async def infer(self, req: InferRequest) -> InferResult:
        t0, began = time.perf_counter(), time.monotonic()
        try:
            return await self._infer(req, t0)
        finally:
            self.spans.append((began, time.monotonic()))

    async def _infer(self, req: InferRequest, t0: float) -> InferResult:
        self.executed += 1
        if time.monotonic() < self.outage_until:
            self.failed += 1
            raise ProviderError("503 Service Unavailable (outage)", provider=self.provider, http_status=503)
        u = self.rng.random()
        duration = self._duration_s(req.max_tokens)
        if u < self.failure_rate:
            await asyncio.sleep(duration * self.rng.random())
            self.failed += 1
            raise ProviderError("502 Bad Gateway", provider=self.provider, http_status=502)
        if u < self.failure_rate + self.preempt_rate:
            await asyncio.sleep(duration * self.rng.random())
            self.preempted += 1
            raise Preempted(f"{self.provider}: the allocation was preempted")
        if not await self._run(duration):
            self.preempted += 1
            raise Preempted(f"{self.provider}: the allocation was preempted (storm)")
        reference = sim_completion(req.model, req.prompt, req.max_tokens)
        return InferResult(text=self.answers.answer(reference, req.prompt, self.answer_rng), model=req.model,
                           prompt_tokens=count_tokens(req.prompt) + sum(count_tokens(m.content) for m in req.context),
                           completion_tokens=req.max_tokens, latency_ms=(time.perf_counter() - t0) * 1000.0,
                           logprob_mean=self.answers.logprob_mean(req.prompt))

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        result = await self.infer(req)
        for word in result.text.split(" "):
            yield word + " "
