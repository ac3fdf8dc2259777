"""The pure half of the ``ollama`` connector: Ollama's HTTP API (provider-apis.md §5) as Structs,
request builders and response parsers, with no I/O, so each is tested as a plain call.

Units are Ollama's: durations in nanoseconds, counts in tokens. Model names compare in their
canonical form (``name:tag``, ``latest`` when no tag is given), as Ollama itself does.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..errors import NoCapacity, ProviderError
from .http import raise_for_status

__all__ = [
    "ChatBody",
    "ChatMessage",
    "Chunk",
    "Completion",
    "GenerateBody",
    "ModelCard",
    "ModelList",
    "canonical",
    "decode_chunk",
    "decode_models",
    "error_message",
    "raise_for_ollama",
]


class ChatMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str = ""


class GenerateBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /api/generate``; ``stream`` is always sent, since Ollama streams by default."""

    model: str
    prompt: str
    stream: bool
    system: str | None = None
    raw: bool = False
    options: dict[str, Any] = {}
    keep_alive: str | float | None = None


class ChatBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /api/chat``."""

    model: str
    messages: list[ChatMessage]
    stream: bool
    options: dict[str, Any] = {}
    keep_alive: str | float | None = None


class Chunk(msgspec.Struct, kw_only=True):
    """One NDJSON line of a stream, or the whole answer with ``stream: false``. An ``error``
    line may arrive mid-stream while the HTTP status stays 200."""

    model: str = ""
    created_at: str = ""
    response: str = ""  # /api/generate
    message: ChatMessage | None = None  # /api/chat
    done: bool = False
    done_reason: str = ""
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0  # absent when Ollama reuses a cached prompt
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0
    error: str | None = None

    @property
    def text(self) -> str:
        return self.message.content if self.message is not None else self.response


class Completion(msgspec.Struct, kw_only=True):
    """A finished generation: the whole text and the final chunk's statistics."""

    node: str
    model: str
    text: str
    done_reason: str
    prompt_eval_count: int
    eval_count: int
    total_duration: int  # ns
    load_duration: int  # ns; large on a cold load
    prompt_eval_duration: int
    eval_duration: int

    @property
    def tokens_per_s(self) -> float:
        return self.eval_count / self.eval_duration * 1e9 if self.eval_duration else 0.0

    @classmethod
    def of(cls, node: str, final: Chunk, text: str) -> Completion:
        return cls(node=node, model=final.model, text=text, done_reason=final.done_reason,
                   prompt_eval_count=final.prompt_eval_count, eval_count=final.eval_count,
                   total_duration=final.total_duration, load_duration=final.load_duration,
                   prompt_eval_duration=final.prompt_eval_duration, eval_duration=final.eval_duration)


class ModelCard(msgspec.Struct, kw_only=True):
    """An entry of ``/api/tags`` (present) or ``/api/ps`` (loaded: ``expires_at``, ``size_vram``)."""

    name: str = ""
    model: str = ""
    size: int = 0
    digest: str = ""
    expires_at: str = ""
    size_vram: int = 0

    @property
    def id(self) -> str:
        return canonical(self.model or self.name)


class ModelList(msgspec.Struct):
    models: list[ModelCard] = []


class _ErrorBody(msgspec.Struct):
    error: str = ""


_chunk = msgspec.json.Decoder(Chunk)
_models = msgspec.json.Decoder(ModelList)
_error = msgspec.json.Decoder(_ErrorBody)


def canonical(name: str) -> str:
    """``llama3`` and ``llama3:latest`` name one model; a tag is kept as given."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def decode_chunk(raw: bytes | str) -> Chunk:
    try:
        return _chunk.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProviderError(f"unreadable answer ({exc}): {_clip(raw)}", provider="ollama") from None


def decode_models(raw: bytes) -> list[ModelCard]:
    try:
        return _models.decode(raw).models
    except msgspec.DecodeError as exc:
        raise ProviderError(f"unreadable model list ({exc}): {_clip(raw)}", provider="ollama") from None


def error_message(raw: bytes) -> str:
    """The ``{"error": …}`` envelope's message, or the start of a body that is not one."""
    try:
        return _error.decode(raw).error or _clip(raw)
    except msgspec.DecodeError:
        return _clip(raw)


def raise_for_ollama(status: int, raw: bytes, *, node: str) -> None:
    """Map a failed call: 503 is Ollama's full queue (retryable elsewhere), 429 a rate limit,
    404 an absent model (another node may hold it); the message is the node's own."""
    message = f"{node}: {error_message(raw)}"
    if status == 503:
        raise NoCapacity(f"busy (503): {message}", provider="ollama", http_status=503)
    raise_for_status("ollama", status, message)


def _clip(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    return text.strip()[:limit] or "(empty body)"
