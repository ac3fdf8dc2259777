"""The OpenAI Chat Completions protocol, as msgspec Structs (OpenAI's shapes, not ours).

Like each simulator's ``wire.py``, a foreign protocol keeps its own module; our own messages stay
in ``homeskillet/wire.py``. Unknown request fields are ignored (clients send options we do not
use); the Homeskillet extensions are ``covenant``, ``overrides`` and ``tenant`` in the request and
the ``homeskillet`` object in the response and in the last stream chunk.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ..wire import FragmentOutcome

__all__ = [
    "AssistantMessage",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatMessage",
    "Choice",
    "ChunkChoice",
    "ContentPart",
    "Delta",
    "ErrorBody",
    "ErrorEnvelope",
    "HomeskilletExtension",
    "Model",
    "ModelList",
    "StreamOptions",
    "Usage",
]


class ContentPart(msgspec.Struct, kw_only=True):
    type: str  # only "text" is served
    text: str | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: str  # a covenant name or a model name; see GET /v1/models
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None
    # Homeskillet extensions (the openai SDK sends them with ``extra_body``)
    covenant: str | None = None  # a covenant template; wins over ``model`` for the lookup
    overrides: dict[str, Any] | None = None  # covenant terms for this request, e.g. {"qos": {"priority": 90}}
    tenant: str | None = None  # auth off: the tenant; auth on: only the token's own (another is 403)


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class HomeskilletExtension(msgspec.Struct, kw_only=True):
    """What the answer cost, where it ran and whether the covenant held."""

    query_id: str
    tenant: str
    covenant: str
    covenant_id: str
    cost_usd: float
    latency_ms: float
    kept: bool  # every fragment kept its covenant terms
    pools: list[str]
    fragments: list[FragmentOutcome]


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = "stop"
    logprobs: None = None


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    homeskillet: HomeskilletExtension


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None  # only in the extra last chunk, with stream_options.include_usage
    homeskillet: HomeskilletExtension | None = None  # in the chunk that carries finish_reason


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "homeskillet"
    kind: Literal["covenant", "model"] = "covenant"  # extension: a covenant template or a model name
    model: str = ""  # the model a covenant serves


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]


class ErrorBody(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct, kw_only=True):
    error: ErrorBody
