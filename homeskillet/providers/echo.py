"""``echo/*`` pools: a deterministic engine for tests and benchmarks, not a model.

It answers with the prompt it was given ("echo: <first max_tokens words>"). Options model the
things strategies react to, all seeded so a run can be repeated:

- ``delay_ms``, ``ms_per_token``: a slower pool;
- ``tail_p``, ``tail_ms``, ``tail_alpha``: a heavy latency tail: with probability ``tail_p`` a
  strike also waits ``tail_ms`` × a Pareto(``tail_alpha``) draw (≥ 1), from a seeded RNG;
- ``quality``, ``vary_wrong``, ``logprobs``, ``confidence_right``, ``confidence_wrong``: how
  often it answers "right" and how confident it says it is (``homeskillet.sims.answers``).

``stream`` yields the same text word by word: ``delay_ms`` (and any tail) before the first word,
then ``ms_per_token`` per token between words, so a streamed strike takes as long as ``infer``.
Tests steer a stream from the outside (the pool host runs in their process): ``hold(after)``
makes the next streams wait on an event after ``after`` words, and ``fail_after``/``fail_with``
(``fail_match``: only for prompts containing it) make them raise mid-stream (a preemption, a
provider error), to check what a client sees.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

from ..errors import ProviderError
from ..sims.answers import AnswerModel
from ..sims.base import count_tokens
from .base import Connector, Emit, InferRequest, InferResult, register

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

    def __init__(self, *, delay_ms: float = 0.0, ms_per_token: float = 0.0, seed: int = 0, tail_p: float = 0.0,
                 tail_ms: float = 0.0, tail_alpha: float = 1.5, quality: float = 1.0, vary_wrong: bool = False,
                 logprobs: bool = False, confidence_right: tuple[float, float] = (0.6, 0.99),
                 confidence_wrong: tuple[float, float] = (0.1, 0.55)) -> None:
        if not 0.0 <= tail_p <= 1.0:
            raise ValueError(f"echo option tail_p={tail_p} is outside 0..1")
        if tail_alpha <= 0:
            raise ValueError(f"echo option tail_alpha={tail_alpha} must be > 0")
        try:
            self.answers = AnswerModel(seed=seed, quality=quality, vary_wrong=vary_wrong, logprobs=logprobs,
                                       confidence_right=tuple(confidence_right),  # type: ignore[arg-type]
                                       confidence_wrong=tuple(confidence_wrong))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"echo option {exc}") from None
        self.delay_ms, self.ms_per_token = delay_ms, ms_per_token
        self.seed, self.tail_p, self.tail_ms, self.tail_alpha = seed, tail_p, tail_ms, tail_alpha
        self.rng = random.Random(seed)
        self.executed = 0  # strikes actually run (the idempotency tests count these)
        self.cancelled = 0  # strikes stopped mid-run (hedge losers)
        self.streamed = 0  # pieces yielded by ``stream`` (tests read it)
        # Test controls for ``stream`` (see the module docstring).
        self.gate: asyncio.Event | None = None
        self.hold_after = -1
        self.fail_after = -1
        self.fail_match = ""  # fail only streams whose prompt contains this
        self.fail_with: Exception = ProviderError("echo: the stream failed (test control)", provider="echo")

    def hold(self, after: int = 1) -> asyncio.Event:
        """Make streams wait after ``after`` pieces until the returned event is set."""
        self.gate, self.hold_after = asyncio.Event(), after
        return self.gate

    def right(self, prompt: str) -> bool:
        """Whether this pool answers ``prompt`` as a quality-1 pool would."""
        return self.answers.right(prompt)

    def _text(self, req: InferRequest) -> str:
        n = max(1, req.max_tokens)
        words = req.prompt.split(maxsplit=n)[:n]  # the first n words, not a list of a long prompt's every word
        return self.answers.answer("echo: " + " ".join(words), req.prompt, self.rng)

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
            logprob_mean=self.answers.logprob_mean(req.prompt),
        )

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        self.executed += 1
        text = self._text(req)
        words = text.split(" ")
        completion = count_tokens(text)
        per_word = self.ms_per_token * completion / len(words)
        first = self._wait_ms(completion) - self.ms_per_token * completion  # delay and tail: before the first word
        try:
            for i, word in enumerate(words):
                wait = first if i == 0 else per_word
                if wait > 0:
                    await asyncio.sleep(wait / 1000.0)
                if i == self.fail_after and self.fail_match in req.prompt:
                    raise self.fail_with
                if i == self.hold_after and self.gate is not None:
                    await self.gate.wait()
                self.streamed += 1
                yield word if i == len(words) - 1 else word + " "
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def stream_result(self, req: InferRequest, emit: Emit) -> InferResult:
        """The pieces of ``stream``, then the same usage ``infer`` reports (so streaming costs the same)."""
        t0 = time.perf_counter()
        pieces: list[str] = []
        async for piece in self.stream(req):
            pieces.append(piece)
            await emit(piece)
        text = "".join(pieces)
        return InferResult(text=text, model=req.model, prompt_tokens=count_tokens(req.prompt),
                           completion_tokens=count_tokens(text), latency_ms=(time.perf_counter() - t0) * 1000.0,
                           logprob_mean=self.answers.logprob_mean(req.prompt))
