"""The I/O half of the OpenRouter connector: chat completions (plain and SSE), the catalogue, credits.

Behaviours worth knowing:

- ``quote`` reads the catalogue (``GET /models``, public) at most every ``models_ttl_s``, so a pool
  host may call it every few seconds; nothing is available while a Retry-After window lasts or
  after a 402 until ``GET /key`` shows credits again (checked at most every ``credits_recheck_s``).
- The cost of a completion is OpenRouter's ``usage.cost`` when present, else the tokens at the
  price of the model that actually ran (the response's ``model``, which may be a fallback).
- A completion accepted and then failed (HTTP 200, ``finish_reason: "error"``) is a retryable
  ``ProviderError``; with zero tokens it is not charged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import httpx
import msgspec
from httpx_sse import aconnect_sse

from ...errors import HomeskilletError, ProviderError, RateLimited
from ...secrets import resolve_secret
from ...sims.base import count_tokens
from ..base import AllocationRequest, Connector, Emit, Health, InferRequest, InferResult, ProviderOffer, register
from ..cooldown import Cooldown
from ..http import make_client, retry_after
from .wire import (
    PROVIDER,
    Chunk,
    Completion,
    ModelEntry,
    Models,
    ProviderPrefs,
    Usage,
    chat_body,
    cost_usd,
    error_for,
    failure,
    offer_from,
)

__all__ = ["OpenRouterConnector", "OpenRouterOptions"]

T = TypeVar("T")


class OpenRouterOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pool's ``options`` for ``provider = "openrouter"`` (the API key is kept out of this Struct)."""

    base_url: str = "https://openrouter.ai/api/v1"
    api_key_env: str = "OPENROUTER_API_KEY"
    api_key_file: str | None = None
    model: str = ""  # the OpenRouter model this pool serves; "" = the strike's model, through model_map
    models: list[str] = []  # fallbacks, tried in order by OpenRouter; billing follows the model that ran
    model_map: dict[str, str] = {}  # our model name -> OpenRouter model id
    provider: ProviderPrefs | None = None  # passed through as the request's ``provider`` object
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    models_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    credits_recheck_s: Annotated[float, msgspec.Meta(ge=0)] = 60.0


class _Key(msgspec.Struct):
    limit_remaining: float | None = None


class _KeyBody(msgspec.Struct):
    data: _Key


def _decode(raw: bytes | str, typ: type[T], what: str) -> T:
    try:
        return msgspec.json.decode(raw, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProviderError(f"unexpected {what} from OpenRouter: {exc}", provider=PROVIDER) from None


@register("openrouter")
class OpenRouterConnector(Connector):
    unsupported = {
        "allocate": "OpenRouter is a hosted API billed per token; there is nothing to allocate",
        "release": "OpenRouter is a hosted API billed per token; there is nothing to release",
        "metrics": "OpenRouter keeps no allocation to report on; per-request stats are in GET /generation",
        "preemptible": "OpenRouter does not evict requests; it falls back to other models or providers instead",
        "bid": "OpenRouter prices are per token, set by the upstream provider; provider.max_price caps them",
    }

    def __init__(self, *, api_key: str | None = None, client: httpx.AsyncClient | None = None,
                 clock: Callable[[], float] | None = None, **options: Any) -> None:
        try:
            self.options = o = msgspec.convert(options, OpenRouterOptions)
        except msgspec.ValidationError as exc:
            raise HomeskilletError(f"openrouter pool options: {exc}; see OpenRouterOptions") from None
        self._key = resolve_secret("openrouter api_key", value=api_key, env=o.api_key_env, file=o.api_key_file)
        self._clock = clock or time.monotonic
        self._own_client = client is None
        self._http = make_client(o.base_url, {"accept": "application/json"},
                                 timeout=httpx.Timeout(o.timeout_s, connect=min(5.0, o.timeout_s)), client=client)
        self._cooldown = Cooldown(PROVIDER, self._clock)
        self._catalogue: dict[str, ModelEntry] | None = None
        self._catalogue_at = -1e18
        self._catalogue_lock = asyncio.Lock()
        self._credits_out = False  # a 402 said so; cleared by a success or by GET /key
        self._credits_checked = -1e18
        self._inflight = 0

    # -- HTTP ------------------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        assert self._key is not None
        return {"authorization": f"Bearer {self._key.reveal()}"}

    async def _get(self, path: str, *, auth: bool = True) -> bytes:
        if auth:  # the rate limit is the key's; the public catalogue is not behind it
            self._cooldown.check()
        try:
            resp = await self._http.get(path, headers=self._auth() if auth else {})
        except httpx.TimeoutException as exc:
            raise ProviderError(f"no answer within {self.options.timeout_s:g}s ({type(exc).__name__}); retry",
                                provider=PROVIDER) from None
        except httpx.TransportError as exc:
            raise ProviderError(f"cannot reach {self.options.base_url}: {type(exc).__name__}",
                                provider=PROVIDER) from None
        return self._ok(resp)

    def _ok(self, resp: httpx.Response) -> bytes:
        if resp.is_success:
            return resp.content
        err = error_for(resp.status_code, resp.content, retry_after(resp))
        if isinstance(err, RateLimited):
            self._cooldown.start(err.retry_after_s)
        if resp.status_code == 402:
            self._credits_out, self._credits_checked = True, self._clock()
        raise err

    def _timeout(self, req: InferRequest) -> float:
        t = self.options.timeout_s
        if req.deadline_ms:  # absolute epoch ms: never wait past the strike's deadline
            t = min(t, max(0.05, req.deadline_ms / 1000.0 - time.time()))
        return t

    # -- catalogue and quotes ----------------------------------------------------------------------
    async def _models(self, *, fresh: bool = False) -> dict[str, ModelEntry]:
        def cached() -> dict[str, ModelEntry] | None:
            young = self._clock() - self._catalogue_at < self.options.models_ttl_s
            return self._catalogue if young and not fresh else None

        if (hit := cached()) is not None:
            return hit
        async with self._catalogue_lock:  # concurrent quotes share one fetch
            if (hit := cached()) is not None:
                return hit
            models = _decode(await self._get("/models", auth=False), Models, "model list").data
            self._catalogue, self._catalogue_at = {m.id: m for m in models}, self._clock()
            return self._catalogue

    def _model_for(self, ours: str) -> str:
        return self.options.model or self.options.model_map.get(ours, ours)

    async def _has_credits(self) -> bool:
        """After a 402: ask ``GET /key`` again at most every ``credits_recheck_s``."""
        if self._credits_out and self._clock() - self._credits_checked >= self.options.credits_recheck_s:
            self._credits_checked = self._clock()
            try:
                key = _decode(await self._get("/key"), _KeyBody, "key").data
            except HomeskilletError:
                return False
            self._credits_out = key.limit_remaining is not None and key.limit_remaining <= 0
        return not self._credits_out

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        catalogue = await self._models()
        if self.options.model or want.model:
            ids = list(dict.fromkeys([self._model_for(want.model), *self.options.models]))
        else:
            ids = list(catalogue)
        available = self._cooldown.remaining() == 0 and await self._has_credits()
        offers = [offer_from(catalogue[i], available=available) for i in ids if i in catalogue]
        return [o for o in offers if o is not None]

    # -- inference ---------------------------------------------------------------------------------
    def _body(self, req: InferRequest, *, stream: bool) -> bytes:
        o = self.options
        return msgspec.json.encode(chat_body(req, self._model_for(req.model), fallbacks=o.models, prefs=o.provider,
                                             stream=stream))

    async def _cost(self, usage: Usage, model: str) -> float | None:
        if usage.cost is not None:
            return usage.cost
        catalogue = await self._models()
        if model not in catalogue:  # a model that ran but is new to us: look once more
            catalogue = await self._models(fresh=True)
        entry = catalogue.get(model)
        return cost_usd(usage, entry.pricing if entry else None)

    async def infer(self, req: InferRequest) -> InferResult:
        self._cooldown.check()
        t0 = time.perf_counter()
        self._inflight += 1
        try:
            resp = await self._http.post("/chat/completions", content=self._body(req, stream=False),
                                         headers={**self._auth(), "content-type": "application/json"},
                                         timeout=self._timeout(req))
        except httpx.TimeoutException as exc:
            raise ProviderError(f"no answer within {self._timeout(req):g}s ({type(exc).__name__}); retry",
                                provider=PROVIDER) from None
        except httpx.TransportError as exc:
            raise ProviderError(f"cannot reach {self.options.base_url}: {type(exc).__name__}",
                                provider=PROVIDER) from None
        finally:
            self._inflight -= 1
        out = _decode(self._ok(resp), Completion, "completion")
        usage = out.usage or Usage()
        ran = out.model or self._model_for(req.model)
        if out.finish_reason == "error" or out.error is not None:
            cost = None if usage.completion_tokens == 0 else await self._cost(usage, ran)
            raise failure(ran, out.error, usage.completion_tokens, cost)
        self._credits_out = False
        return InferResult(text=out.text, model=ran, prompt_tokens=usage.prompt_tokens,
                           completion_tokens=usage.completion_tokens, latency_ms=(time.perf_counter() - t0) * 1000.0,
                           billed_usd=await self._cost(usage, ran))  # fmt: skip

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        """Text pieces from OpenRouter's SSE chunks; an error event mid-stream raises."""
        async for piece in self._stream(req, None):
            yield piece

    async def stream_result(self, req: InferRequest, emit: Emit) -> InferResult:
        """A streamed strike, priced from the usage (and cost) OpenRouter sends in its last chunk."""
        t0 = time.perf_counter()
        pieces: list[str] = []
        last: list[tuple[Usage, str]] = []
        async for piece in self._stream(req, last):
            pieces.append(piece)
            await emit(piece)
        text = "".join(pieces)
        if not last:  # no usage chunk: estimate, as the base class does
            usage, ran = Usage(prompt_tokens=count_tokens(req.prompt), completion_tokens=count_tokens(text)), \
                self._model_for(req.model)
        else:
            usage, ran = last[-1]
        return InferResult(text=text, model=ran, prompt_tokens=usage.prompt_tokens,
                           completion_tokens=usage.completion_tokens, latency_ms=(time.perf_counter() - t0) * 1000.0,
                           billed_usd=await self._cost(usage, ran))

    async def _stream(self, req: InferRequest, usage_out: list[tuple[Usage, str]] | None) -> AsyncIterator[str]:
        self._cooldown.check()
        headers = {**self._auth(), "content-type": "application/json"}
        sent = 0
        self._inflight += 1
        try:
            async with aconnect_sse(self._http, "POST", "/chat/completions", content=self._body(req, stream=True),
                                    headers=headers, timeout=self._timeout(req)) as events:
                if not events.response.is_success:
                    await events.response.aread()
                    self._ok(events.response)
                async for event in events.aiter_sse():
                    if event.data == "[DONE]":
                        break
                    chunk = _decode(event.data, Chunk, "stream chunk")
                    if chunk.error is not None or any(c.finish_reason == "error" for c in chunk.choices):
                        usage = chunk.usage or Usage()  # without usage, count the pieces already sent
                        raise failure(chunk.model, chunk.error, usage.completion_tokens or sent, usage.cost)
                    if chunk.usage is not None and usage_out is not None:
                        usage_out.append((chunk.usage, chunk.model or self._model_for(req.model)))
                    for choice in chunk.choices:
                        if choice.delta.content:
                            sent += 1
                            yield choice.delta.content
        except httpx.TimeoutException as exc:
            raise ProviderError(f"no answer within {self._timeout(req):g}s ({type(exc).__name__}); retry",
                                provider=PROVIDER) from None
        except httpx.TransportError as exc:
            raise ProviderError(f"stream from {self.options.base_url} broke: {type(exc).__name__}",
                                provider=PROVIDER) from None
        finally:
            self._inflight -= 1
        self._credits_out = False

    # -- health and shutdown -----------------------------------------------------------------------
    async def health(self) -> Health:
        """The key works and has credits left (``GET /key``)."""
        t0 = time.perf_counter()
        try:
            key = _decode(await self._get("/key"), _KeyBody, "key").data
        except HomeskilletError as exc:
            return Health(ok=False, detail=exc.message, latency_ms=(time.perf_counter() - t0) * 1000.0)
        self._credits_out = key.limit_remaining is not None and key.limit_remaining <= 0
        left = "unlimited" if key.limit_remaining is None else f"${key.limit_remaining:.4f}"
        return Health(ok=not self._credits_out, detail=f"credits left: {left}", active=self._inflight,
                      latency_ms=(time.perf_counter() - t0) * 1000.0)

    async def close(self) -> None:
        if self._own_client:
            await self._http.aclose()
