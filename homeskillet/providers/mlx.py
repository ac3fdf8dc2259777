"""``mlx/local``: real inference with MLX on this machine's CPU (or Apple GPU).

The model is the small transformer of ``mlx_model`` built from a config with a fixed seed: no
downloads. Inference runs in a worker thread so the I/O loop never blocks; the ``mlx`` extra
is imported lazily and its absence is a clear error naming the extra.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from .base import Connector, InferRequest, InferResult, register

__all__ = ["MlxConnector"]


@register("mlx")
class MlxConnector(Connector):
    unsupported = {
        "quote": "local MLX is priced by its pool spec",
        "allocate": "local MLX runs in this process; there is nothing to allocate",
        "release": "local MLX runs in this process; there is nothing to release",
        "metrics": "local MLX keeps no allocation metrics",
        "preemptible": "local capacity is never preempted",
        "bid": "local capacity has no market price",
    }

    def __init__(self, **config: Any) -> None:
        from .mlx_model import TinyConfig, require_mlx

        require_mlx()
        self.config = TinyConfig(**config)
        self.executed = 0

    def _model(self) -> Any:
        from .mlx_model import get_model

        return get_model(self.config)

    async def warm(self) -> None:
        await asyncio.to_thread(self._model)

    async def infer(self, req: InferRequest) -> InferResult:
        t0 = time.perf_counter()
        self.executed += 1
        prompt = "\n".join([*(f"{m.role}: {m.content}" for m in req.context), req.prompt])
        gen = await asyncio.to_thread(self._model().generate, prompt, req.max_tokens, req.temperature)
        return InferResult(
            text=gen.text,
            model=req.model,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        result = await self.infer(req)
        yield result.text
