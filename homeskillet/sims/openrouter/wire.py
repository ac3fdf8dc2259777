"""OpenRouter bodies (``provider-apis.md`` §10): the model catalogue, the OpenAI Chat Completions
request with OpenRouter's ``models`` and ``provider`` extensions, responses, stream chunks, errors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = [
    "Architecture",
    "ChatCompletion",
    "ChatMessage",
    "ChatRequest",
    "Choice",
    "Chunk",
    "ChunkChoice",
    "Delta",
    "ErrorDetail",
    "Generation",
    "MaxPrice",
    "Message",
    "Model",
    "OpenRouterError",
    "Pricing",
    "ProviderPrefs",
    "StreamOptions",
    "TopProvider",
    "Usage",
]

_Nat = Annotated[int, msgspec.Meta(ge=1)]
_Threshold = float | dict[str, float] | None  # a number, or percentiles such as {"p90": 50}


class Architecture(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    output_modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])
    tokenizer: str = "Other"
    instruct_type: str | None = None


class Pricing(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per token (per request, per image) as decimal strings, exactly as OpenRouter sends them."""

    prompt: str
    completion: str
    request: str = "0"
    image: str = "0"
    input_cache_read: str = "0"
    input_cache_write: str = "0"


class TopProvider(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    context_length: int
    max_completion_tokens: int | None = None
    is_moderated: bool = False


class Model(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One ``GET /models`` entry; in ``SimConfig.extra["models"]`` only ``id`` and ``pricing`` are needed."""

    id: str
    canonical_slug: str = ""  # defaults to id
    name: str = ""  # defaults to id
    created: int = 0
    description: str = ""
    context_length: int = 8192
    architecture: Architecture = msgspec.field(default_factory=Architecture)
    pricing: Pricing
    top_provider: TopProvider = msgspec.field(default_factory=lambda: TopProvider(context_length=0))
    per_request_limits: dict[str, Any] | None = None
    supported_parameters: list[str] = msgspec.field(
        default_factory=lambda: ["max_tokens", "temperature", "top_p", "stop", "seed"]
    )

    def __post_init__(self) -> None:
        self.canonical_slug = self.canonical_slug or self.id
        self.name = self.name or self.id
        self.top_provider.context_length = self.top_provider.context_length or self.context_length


class Message(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None  # a string or OpenAI content parts


class MaxPrice(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """USD per million prompt / completion tokens; USD per request and per image."""

    prompt: float | None = None
    completion: float | None = None
    request: float | None = None
    image: float | None = None


class ProviderPrefs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    order: list[str] | None = None
    allow_fallbacks: bool = True
    require_parameters: bool = False
    data_collection: Literal["allow", "deny"] = "allow"
    zdr: bool | None = None
    enforce_distillable_text: bool | None = None
    only: list[str] | None = None
    ignore: list[str] | None = None
    quantizations: list[str] | None = None
    sort: Literal["price", "throughput", "latency"] | None = None
    preferred_min_throughput: _Threshold = None
    preferred_max_latency: _Threshold = None
    max_price: MaxPrice | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatRequest(msgspec.Struct, kw_only=True):
    """Unknown OpenAI parameters are accepted and ignored, as OpenRouter does; ``provider`` is strict."""

    model: str | None = None
    models: list[str] | None = None  # fallbacks, tried in order after ``model``
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    max_tokens: _Nat | None = None
    max_completion_tokens: _Nat | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    provider: ProviderPrefs | None = None
    user: str | None = None


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float | msgspec.UnsetType = msgspec.UNSET  # USD charged; absent when ``extra["report_cost"]`` is false


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: ChatMessage
    finish_reason: str
    native_finish_reason: str
    logprobs: None = None


class ErrorDetail(msgspec.Struct, kw_only=True):
    code: int
    message: str
    metadata: dict[str, Any] = {}


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str  # the model that ran, which may be a fallback
    provider: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    error: ErrorDetail | msgspec.UnsetType = msgspec.UNSET  # the model failed after the request was accepted


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    native_finish_reason: str | None = None


class Chunk(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    provider: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    error: ErrorDetail | msgspec.UnsetType = msgspec.UNSET  # a mid-stream failure, finish_reason "error"


class Generation(msgspec.Struct, kw_only=True):
    """``GET /generation?id=``: one request's cost and stats."""

    id: str
    model: str
    provider_name: str
    created_at: str
    total_cost: float
    usage: float
    tokens_prompt: int
    tokens_completion: int
    native_tokens_prompt: int
    native_tokens_completion: int
    latency: int  # ms
    generation_time: int  # ms
    streamed: bool
    cancelled: bool
    finish_reason: str
    native_finish_reason: str
    origin: str = ""
    is_byok: bool = False


class OpenRouterError(Exception):
    """Rendered as ``{"error": {"code": <http status>, "message", "metadata"}}``."""

    def __init__(self, status: int, message: str, metadata: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.metadata, self.headers = status, message, metadata or {}, headers
