"""``ollama/*`` pools: one Ollama node over its HTTP API (provider-apis.md §5).

``/api/generate`` when a strike has no context, ``/api/chat`` when it has; plain JSON for
``infer``, NDJSON for ``stream``. Health reads ``/api/tags`` (models present) and ``/api/ps``
(models warm); the load score comes from the requests this connector has in flight and an EWMA
of their latency, since Ollama reports neither. A node costs nothing per token or hour, but its
capacity is limited: ``quote`` offers the node at $0 with ``available`` free slots.

The HTTP client is injected or built for ``base_url``; a ``transport`` (an SSH tunnel, an ASGI
app) slots in under the same code, which is how ``providers/ssh.py`` reaches nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import msgspec

from ..errors import BadRequest, HomeskilletError, ProviderError
from ..telemetry import get_logger
from .base import AllocationRequest, Connector, Emit, Health, InferRequest, InferResult, ProviderOffer, register
from .http import make_client
from .ollama_api import (
    ChatBody,
    ChatMessage,
    Chunk,
    Completion,
    GenerateBody,
    canonical,
    decode_chunk,
    decode_models,
    raise_for_ollama,
)

__all__ = ["DEFAULT_URL", "NodeLoad", "OllamaConnector"]

DEFAULT_URL = "http://127.0.0.1:11434"
log = get_logger("homeskillet.providers.ollama")


class NodeLoad:
    """Requests in flight and an EWMA of their latency: what a node's load score is made of."""

    def __init__(self, alpha: float = 0.3, prior_ms: float = 1000.0) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {alpha}")
        self.alpha, self.prior_ms = alpha, prior_ms
        self.active = 0
        self.ewma_ms: float | None = None  # None until a request has finished

    def observe(self, ms: float) -> None:
        self.ewma_ms = ms if self.ewma_ms is None else self.alpha * ms + (1 - self.alpha) * self.ewma_ms

    @property
    def load(self) -> float:
        """Seconds of work in flight, by the latency seen so far: 0 when idle."""
        return self.active * (self.ewma_ms if self.ewma_ms is not None else self.prior_ms) / 1000.0

    def expected_ms(self) -> float:
        """When one more request would finish if requests ran one after another."""
        return (self.active + 1) * (self.ewma_ms if self.ewma_ms is not None else self.prior_ms)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        self.active += 1
        t0 = time.perf_counter()
        try:
            yield
            self.observe((time.perf_counter() - t0) * 1000.0)  # only finished requests count
        finally:
            self.active -= 1


@register("ollama")
class OllamaConnector(Connector):
    unsupported = {
        "allocate": "an Ollama node serves the models it holds; there is nothing to allocate",
        "release": "an Ollama node holds no allocation to release",
        "metrics": "Ollama keeps no per-allocation metrics; health() carries load and warm models",
        "preemptible": "an Ollama node is never preempted",
        "bid": "an Ollama node has no market price: it costs $0 and its capacity is the limit",
    }

    def __init__(self, *, base_url: str = DEFAULT_URL, name: str = "", client: httpx.AsyncClient | None = None,
                 transport: httpx.AsyncBaseTransport | None = None, timeout_s: float = 300.0,
                 keep_alive: str | float | None = None, parallel: int = 1, model_map: dict[str, str] | None = None,
                 accelerator: str = "gpu", gpu_model: str = "", vram_mb: int = 0, region: str = "",
                 cold_load_ms: float = 1000.0, ewma_alpha: float = 0.3) -> None:
        if client is not None and transport is not None:
            raise HomeskilletError("ollama: give either client or transport, not both")
        if parallel < 1:
            raise HomeskilletError(f"ollama: parallel must be at least 1 (OLLAMA_NUM_PARALLEL), got {parallel}")
        timeout = httpx.Timeout(timeout_s, connect=10.0)
        if transport is not None:
            client = httpx.AsyncClient(base_url=base_url.rstrip("/"), transport=transport, timeout=timeout)
            self._owns_client = True
        else:
            self._owns_client = client is None
        self._client = make_client(base_url, timeout=timeout, client=client)
        self.name = name or str(self._client.base_url).rstrip("/")
        self.timeout_s, self.keep_alive, self.parallel = timeout_s, keep_alive, parallel
        self.model_map = dict(model_map or {})
        self.accelerator, self.gpu_model, self.vram_mb, self.region = accelerator, gpu_model, vram_mb, region
        self.cold_load_ms = cold_load_ms
        self.load = NodeLoad(ewma_alpha)
        self.models: list[str] = []  # present, as of the last health check
        self.warm: set[str] = set()  # loaded, as of the last health check or request
        self.cold_loads = 0  # answers whose load_duration was at least cold_load_ms

    def node_model(self, model: str) -> str:
        """The name sent to the node for ``model`` (through ``model_map``)."""
        return self.model_map.get(model, model)

    def warm_names(self) -> list[str]:
        """Warm models as the node names them and as pools and strikes do ("smollm2-135m:latest" is
        also "smollm2-135m"; a ``model_map`` target is also its key), so a bid's model matches either."""
        ours = {canonical(node): mine for mine, node in self.model_map.items()}
        return sorted({*self.warm, *(ours.get(n, n.removesuffix(":latest")) for n in self.warm)})

    def resolve(self, model: str) -> str:
        """The node's name for ``model``, canonical (as ``/api/tags`` and ``/api/ps`` list it)."""
        return canonical(self.node_model(model))

    # -- the thin async half ------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Network failures become retryable provider errors naming the node, never the body."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{self.name}: timed out ({type(exc).__name__})", provider="ollama") from None
        except httpx.TransportError as exc:
            raise ProviderError(f"{self.name}: cannot reach the node: {type(exc).__name__}: {exc}",
                                provider="ollama") from None

    async def chunks(self, body: GenerateBody | ChatBody, *, timeout_s: float | None = None) -> AsyncGenerator[Chunk]:
        """The node's answer chunk by chunk (one chunk when ``body.stream`` is false)."""
        path = "/api/chat" if isinstance(body, ChatBody) else "/api/generate"
        with self._guard():
            async with self._client.stream("POST", path, content=msgspec.json.encode(body),
                                           headers={"content-type": "application/json"},
                                           timeout=timeout_s or self.timeout_s) as resp:
                if resp.status_code >= 400:
                    raise_for_ollama(resp.status_code, await resp.aread(), node=self.name)
                lines = resp.aiter_lines() if body.stream else _one(await resp.aread())
                async for line in lines:
                    if not line.strip():
                        continue
                    chunk = decode_chunk(line)
                    if chunk.error is not None:  # in-band: the status was 200 when the stream began
                        raise ProviderError(f"{self.name}: error during generation: {chunk.error}",
                                            provider="ollama", http_status=resp.status_code)
                    yield chunk

    async def complete(self, body: GenerateBody | ChatBody, *, timeout_s: float | None = None) -> Completion:
        """Run one request to its end, streamed or not, and return the text with its statistics."""
        parts: list[str] = []
        with self.load.track():
            async with contextlib.aclosing(self.chunks(body, timeout_s=timeout_s)) as chunks:
                async for chunk in chunks:
                    parts.append(chunk.text)
                    if chunk.done:
                        return self._finished(body.model, chunk, "".join(parts))
        raise ProviderError(f"{self.name}: the answer ended before its final chunk", provider="ollama")

    def _finished(self, model: str, final: Chunk, text: str) -> Completion:
        done = Completion.of(self.name, final, text)
        self.warm.add(canonical(model))
        if done.load_duration >= self.cold_load_ms * 1e6:
            self.cold_loads += 1
            log.info("ollama_cold_load", node=self.name, model=model, load_ms=round(done.load_duration / 1e6, 1))
        return done

    async def generate(self, model: str, prompt: str, *, system: str | None = None, raw: bool = False,
                       options: dict[str, Any] | None = None, stream: bool = False) -> Completion:
        body = GenerateBody(model=self.node_model(model), prompt=prompt, stream=stream, system=system, raw=raw,
                            options=options or {}, keep_alive=self.keep_alive)
        return await self.complete(body)

    async def chat(self, model: str, messages: Sequence[tuple[str, str]], *, options: dict[str, Any] | None = None,
                   stream: bool = False) -> Completion:
        body = ChatBody(model=self.node_model(model), messages=[ChatMessage(role=r, content=c) for r, c in messages],
                        stream=stream, options=options or {}, keep_alive=self.keep_alive)
        return await self.complete(body)

    # -- the Connector interface --------------------------------------------------------------

    def _body(self, req: InferRequest, stream: bool) -> GenerateBody | ChatBody:
        if req.allocation is not None:
            raise BadRequest(f"{self.name}: Ollama serves without allocations, but the strike carries "
                             f"{req.allocation.allocation_id!r} from {req.allocation.provider!r}")
        options = {"num_predict": req.max_tokens, "temperature": req.temperature}
        model = self.node_model(req.model)
        if req.context:
            messages = [ChatMessage(role=m.role, content=m.content) for m in req.context]
            return ChatBody(model=model, messages=[*messages, ChatMessage(role="user", content=req.prompt)],
                            stream=stream, options=options, keep_alive=self.keep_alive)
        return GenerateBody(model=model, prompt=req.prompt, stream=stream, options=options, keep_alive=self.keep_alive)

    async def infer(self, req: InferRequest) -> InferResult:
        t0 = time.perf_counter()
        done = await self.complete(self._body(req, stream=False), timeout_s=req.deadline_ms / 1000.0 or None)
        return InferResult(text=done.text, model=req.model, prompt_tokens=done.prompt_eval_count,
                           completion_tokens=done.eval_count, latency_ms=(time.perf_counter() - t0) * 1000.0)

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        async for piece in self._stream(req, None):
            yield piece

    async def stream_result(self, req: InferRequest, emit: Emit) -> InferResult:
        """A streamed strike with the node's own token counts (from its final chunk)."""
        t0 = time.perf_counter()
        pieces: list[str] = []
        final: list[Completion] = []
        async for piece in self._stream(req, final):
            pieces.append(piece)
            await emit(piece)
        done = final[-1]
        return InferResult(text="".join(pieces), model=req.model, prompt_tokens=done.prompt_eval_count,
                           completion_tokens=done.eval_count, latency_ms=(time.perf_counter() - t0) * 1000.0)

    async def _stream(self, req: InferRequest, final: list[Completion] | None) -> AsyncIterator[str]:
        body = self._body(req, stream=True)
        with self.load.track():
            async with contextlib.aclosing(self.chunks(body, timeout_s=req.deadline_ms / 1000.0 or None)) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        yield chunk.text
                    if chunk.done:
                        done = self._finished(body.model, chunk, "")
                        if final is not None:
                            final.append(done)
                        return
        raise ProviderError(f"{self.name}: the stream ended before its final chunk", provider="ollama")

    async def refresh(self) -> Health:
        """Read ``/api/tags`` and ``/api/ps``; raise when the node cannot answer."""
        t0 = time.perf_counter()
        with self._guard():
            tags, ps = await asyncio.gather(self._client.get("/api/tags"), self._client.get("/api/ps"))
        for resp in (tags, ps):
            if resp.status_code >= 400:
                raise_for_ollama(resp.status_code, resp.content, node=self.name)
        self.models = [m.id for m in decode_models(tags.content)]
        self.warm = {m.id for m in decode_models(ps.content)}
        ok = bool(self.models)
        detail = (f"{len(self.models)} models, {len(self.warm)} warm" if ok
                  else "no models on the node; pull one (ollama pull <model>)")
        return Health(ok=ok, detail=detail, latency_ms=(time.perf_counter() - t0) * 1000.0,
                      warm_models=self.warm_names(), active=self.load.active, load=self.load.load)

    async def health(self) -> Health:
        try:
            return await self.refresh()
        except HomeskilletError as exc:
            return Health(ok=False, detail=str(exc), active=self.load.active, load=self.load.load)

    def offer(self) -> ProviderOffer:
        """This node as one $0 offer, from what the last health check saw."""
        free = max(0, self.parallel - self.load.active)
        return ProviderOffer(offer_id=self.name, accelerator=self.accelerator, gpu_model=self.gpu_model,
                             vram_mb=self.vram_mb, region=self.region, available=free, models=list(self.models),
                             warm_models=self.warm_names())

    def holds(self, model: str) -> bool:
        return self.resolve(model) in self.models

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        await self.refresh()
        return [self.offer()] if not want.model or self.holds(want.model) else []

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()


async def _one(raw: bytes) -> AsyncIterator[str]:
    yield raw.decode(errors="replace")
