"""Inference on a rented machine whose allocations a connector keeps per model (io.net
deployments, TPU VMs): ``ChatOnBox`` supplies ``infer`` and ``stream`` over the box's
OpenAI-compatible server (``providers/openai_compat.py``, the same client Vast.ai and RunPod use)
and per-allocation stats. A connector provides the allocation (``_allocation``), the failure
diagnosis (``_failed``: preempted? ended?) and the model id its server was started with.
No credential is ever sent here: the instance's server is not the provider's API.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx

from ...errors import HomeskilletError, ProviderError
from ...telemetry import get_logger
from ..base import Allocation, InferRequest, InferResult, StandingAllocation
from ..openai_compat import EndpointDown, complete, stream_chat, timeout_for

__all__ = ["BoxStats", "ChatOnBox"]

log = get_logger("homeskillet.providers.box")


class BoxStats:
    """Inferences served on one allocation and their summed latency (for its metrics)."""

    __slots__ = ("count", "latency_ms")

    def __init__(self) -> None:
        self.count, self.latency_ms = 0, 0.0


class ChatOnBox:
    """``infer`` and ``stream`` for a connector that supplies ``_allocation``, ``_failed``,
    ``_model_id`` and ``_infer_timeout_s``; shared by the io.net and TPU connectors."""

    provider: str
    _client: httpx.AsyncClient
    _active: int
    _stats: dict[str, BoxStats]
    _standing: dict[str, StandingAllocation]

    async def _release_standing(self) -> None:
        """Release every standing allocation; a refusal is logged, not raised, so shutdown goes on."""
        for standing in list(self._standing.values()):
            try:
                await standing.close()
            except HomeskilletError as exc:
                log.warning(f"{self.provider}_close_release_failed", error=exc.message)
        self._standing.clear()

    async def _allocation(self, req: InferRequest) -> tuple[Allocation, StandingAllocation | None]:
        raise NotImplementedError

    async def _failed(self, exc: ProviderError, alloc: Allocation, standing: StandingAllocation | None,
                      t0: float) -> Exception:
        raise NotImplementedError

    def _model_id(self, model: str) -> str:
        raise NotImplementedError

    def _infer_timeout_s(self) -> float:
        raise NotImplementedError

    def _down(self, down: EndpointDown) -> ProviderError:
        return ProviderError(f"the instance's server did not answer: {down.detail}", provider=self.provider)

    async def infer(self, req: InferRequest) -> InferResult:
        alloc, standing = await self._allocation(req)
        model_id = str(alloc.detail.get("model_id") or self._model_id(req.model))
        self._active += 1
        t0 = time.perf_counter()
        try:
            done = await complete(self._client, alloc.endpoint, req, provider=self.provider, model=model_id,
                                  timeout=timeout_for(req, self._infer_timeout_s()))
        except EndpointDown as down:
            raise await self._failed(self._down(down), alloc, standing, t0) from None
        except ProviderError as exc:
            raise await self._failed(exc, alloc, standing, t0) from None
        finally:
            self._active -= 1
        stats = self._stats.setdefault(alloc.allocation_id, BoxStats())
        stats.count, stats.latency_ms = stats.count + 1, stats.latency_ms + done.latency_ms
        return done

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        alloc, standing = await self._allocation(req)
        model_id = str(alloc.detail.get("model_id") or self._model_id(req.model))
        self._active += 1
        t0 = time.perf_counter()
        try:
            async for piece in stream_chat(self._client, alloc.endpoint, req, provider=self.provider, model=model_id,
                                           timeout=timeout_for(req, self._infer_timeout_s())):
                yield piece
        except EndpointDown as down:
            raise await self._failed(self._down(down), alloc, standing, t0) from None
        except ProviderError as exc:
            raise await self._failed(exc, alloc, standing, t0) from None
        finally:
            self._active -= 1
