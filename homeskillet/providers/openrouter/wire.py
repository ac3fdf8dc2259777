"""The pure half of the OpenRouter connector (``provider-apis.md`` §10): the chat request with the
``models`` fallbacks and the ``provider`` preferences, the catalogue, responses and stream chunks,
and their mapping to our offers, results, costs and errors. No I/O here.

Response Structs ignore fields they do not name; the ``provider`` preferences, which come from a
pool's options, are strict so a typo in a TOML file is an error naming the key.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import msgspec

from ...errors import NoCapacity, ProviderAuthError, ProviderError, RateLimited
from ..base import InferRequest, ProviderOffer

__all__ = [
    "PROVIDER",
    "ChatBody",
    "ChatMessage",
    "Chunk",
    "Completion",
    "MaxPrice",
    "ModelEntry",
    "Models",
    "Pricing",
    "ProviderPrefs",
    "chat_body",
    "cost_usd",
    "error_for",
    "failure",
    "offer_from",
    "per_million",
]

PROVIDER = "openrouter"


# -- the provider preferences object, passed through from a pool's options --------------------------
class MaxPrice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """USD per million prompt / completion tokens; USD per request and per image."""

    prompt: float | None = None
    completion: float | None = None
    request: float | None = None
    image: float | None = None


class ProviderPrefs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    order: list[str] | None = None
    allow_fallbacks: bool | None = None  # OpenRouter's default is true
    require_parameters: bool | None = None
    data_collection: Literal["allow", "deny"] | None = None
    zdr: bool | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    quantizations: list[str] | None = None
    sort: Literal["price", "throughput", "latency"] | None = None
    preferred_min_throughput: float | dict[str, float] | None = None
    preferred_max_latency: float | dict[str, float] | None = None
    max_price: MaxPrice | None = None


# -- requests --------------------------------------------------------------------------------------
class ChatMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str


class ChatBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float  # always sent: OpenRouter's default is 1.0, ours 0.0
    stream: bool = False
    models: list[str] | None = None  # fallbacks after ``model``
    provider: ProviderPrefs | None = None


def chat_body(req: InferRequest, model: str, *, fallbacks: list[str], prefs: ProviderPrefs | None,
              stream: bool) -> ChatBody:
    messages = [ChatMessage(role=m.role, content=m.content) for m in req.context]
    return ChatBody(model=model, messages=[*messages, ChatMessage(role="user", content=req.prompt)],
                    max_tokens=req.max_tokens, temperature=req.temperature, stream=stream,
                    models=[m for m in fallbacks if m != model] or None, provider=prefs)  # fmt: skip


# -- the catalogue ---------------------------------------------------------------------------------
class Pricing(msgspec.Struct, kw_only=True):
    """USD per token (per request), as decimal strings."""

    prompt: str = "0"
    completion: str = "0"
    request: str = "0"


class ModelEntry(msgspec.Struct, kw_only=True):
    id: str
    pricing: Pricing = msgspec.field(default_factory=Pricing)
    context_length: int | None = None


class Models(msgspec.Struct):
    data: list[ModelEntry]


def per_million(price: str) -> float | None:
    """A per-token decimal string as USD per million tokens; None for a variable price ("-1")."""
    try:
        value = Decimal(price) * 1_000_000
    except InvalidOperation:
        return None
    return float(value) if value >= 0 else None


def offer_from(model: ModelEntry, *, available: bool) -> ProviderOffer | None:
    p_in, p_out = per_million(model.pricing.prompt), per_million(model.pricing.completion)
    if p_in is None or p_out is None:  # routers priced per request at run time cannot be quoted
        return None
    return ProviderOffer(offer_id=model.id, accelerator="api", usd_per_mtok_in=p_in, usd_per_mtok_out=p_out,
                         available=1 if available else 0, models=[model.id])  # fmt: skip


# -- responses -------------------------------------------------------------------------------------
class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None  # USD, when OpenRouter reports it


class ErrorDetail(msgspec.Struct, kw_only=True):
    code: int | str = 0
    message: str = ""
    metadata: dict[str, Any] | None = None


class _Out(msgspec.Struct, kw_only=True):
    content: str | None = None


class _Choice(msgspec.Struct, kw_only=True):
    message: _Out | None = None
    finish_reason: str | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str = ""
    model: str = ""  # the model that ran, which may be a fallback
    choices: list[_Choice] = []
    usage: Usage | None = None
    error: ErrorDetail | None = None  # a model failure after the request was accepted (HTTP 200)

    @property
    def text(self) -> str:
        return "".join(c.message.content or "" for c in self.choices if c.message is not None)

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason if self.choices else None


class _Delta(msgspec.Struct, kw_only=True):
    content: str | None = None


class _ChunkChoice(msgspec.Struct, kw_only=True):
    delta: _Delta = msgspec.field(default_factory=_Delta)
    finish_reason: str | None = None


class Chunk(msgspec.Struct, kw_only=True):
    model: str = ""
    choices: list[_ChunkChoice] = []
    usage: Usage | None = None
    error: ErrorDetail | None = None


def cost_usd(usage: Usage, pricing: Pricing | None) -> float | None:
    """What the request cost: OpenRouter's own figure when it gives one, else the tokens at the
    price of the model that ran (decimal arithmetic on the decimal strings)."""
    if usage.cost is not None:
        return usage.cost
    if pricing is None:
        return None
    try:
        total = (Decimal(pricing.prompt) * usage.prompt_tokens + Decimal(pricing.completion) * usage.completion_tokens
                 + Decimal(pricing.request))
    except InvalidOperation:
        return None
    return float(total)


def failure(model: str, error: ErrorDetail | None, tokens: int, cost: float | None) -> ProviderError:
    """A completion that ended with ``finish_reason: "error"``: retryable elsewhere; OpenRouter
    charges nothing when no token was produced."""
    what = error.message if error is not None and error.message else "the model failed"
    billed = "not charged" if tokens == 0 else f"{tokens} tokens charged (${cost or 0:.6f})"
    return ProviderError(f"{model or 'the model'} failed after accepting the request: {what}; {billed}",
                         provider=PROVIDER, http_status=502)


# -- errors ----------------------------------------------------------------------------------------
class _ErrorBody(msgspec.Struct):
    error: ErrorDetail


def _final(err: ProviderError) -> ProviderError:
    err.retryable = False  # sending the same request to this pool again cannot help
    return err


def error_for(status: int, body: bytes, retry_after_s: float | None) -> ProviderError:
    """The one place OpenRouter's errors become ours."""
    try:
        e = msgspec.json.decode(body, type=_ErrorBody).error
        message, meta = e.message, e.metadata or {}
    except (msgspec.DecodeError, msgspec.ValidationError):
        message, meta = body[:200].decode("utf-8", "replace").strip(), {}
    message = message or f"HTTP {status}"
    match status:
        case 400:
            return _final(ProviderError(f"bad request: {message}", provider=PROVIDER, http_status=status))
        case 401:
            return ProviderAuthError(f"credential refused (401): {message}; check the pool's api key",
                                     provider=PROVIDER, http_status=status)
        case 402:
            return _final(ProviderError(f"out of credits (402): {message}; add credits to the OpenRouter account",
                                        provider=PROVIDER, http_status=status))
        case 403:
            reasons = ", ".join(meta.get("reasons", [])) if isinstance(meta.get("reasons"), list) else ""
            return _final(ProviderError(f"refused by moderation or a guardrail (403): {message}"
                                        + (f" [{reasons}]" if reasons else ""), provider=PROVIDER, http_status=status))
        case 408:
            return ProviderError(f"the upstream model timed out (408): {message}", provider=PROVIDER,
                                 http_status=status)
        case 429:
            return RateLimited(f"rate limited: {message}", provider=PROVIDER, retry_after_s=retry_after_s)
        case 502:
            return ProviderError(f"upstream model error (502): {message}", provider=PROVIDER, http_status=status)
        case 503 | 404 if status == 503 or message.startswith("No endpoints found"):
            return NoCapacity(f"no provider available ({status}): {message}", provider=PROVIDER, http_status=status)
    return ProviderError(f"HTTP {status}: {message}", provider=PROVIDER, http_status=status)

