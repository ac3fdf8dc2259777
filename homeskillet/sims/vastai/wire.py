"""Vast.ai request bodies as msgspec Structs, plus the JSON response the simulator answers with.

Bodies are decoded once at the edge; a body that does not fit is answered 400 ``invalid_args``.
Unknown keys are ignored, as Vast's own API does for the many optional flags clients send.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from homeskillet.sims.common import JSON, ChatMessage, ChatRequest

__all__ = ["JSON", "ChangeBid", "ChangeState", "ChatMessage", "ChatRequest", "CreateInstance", "SearchAsks",
           "prompt_of"]

Price = Annotated[float, msgspec.Meta(ge=0, le=1e6)]


class CreateInstance(msgspec.Struct, kw_only=True):
    """Body of ``PUT /asks/{id}/``; unknown keys (dstack's ``python_utf8`` ...) are accepted and ignored."""

    image: str | None = None
    client_id: str = "me"
    disk: Annotated[float, msgspec.Meta(ge=1, le=100_000)] = 10.0
    label: str | None = None
    env: dict[str, Any] | None = None
    onstart: str | None = None
    runtype: str | None = None
    args: list[str] | None = None
    price: Price | None = None  # null = on-demand; a number = $/h bid, interruptible
    image_login: str | None = None
    template_hash_id: str | None = None
    cancel_unavail: bool = False
    force: bool = False
    user: str | None = None


class ChangeState(msgspec.Struct, kw_only=True):
    state: Literal["stopped", "running"] | None = None
    label: str | None = None


class ChangeBid(msgspec.Struct, kw_only=True):
    price: Price
    client_id: str = "me"


class SearchAsks(msgspec.Struct, kw_only=True):
    q: dict[str, Any] = {}
    select_cols: list[str] = msgspec.field(default_factory=lambda: ["*"])


def prompt_of(messages: list[ChatMessage]) -> str:
    parts: list[str] = []
    for m in messages:
        if isinstance(m.content, str):
            parts.append(m.content)
        elif isinstance(m.content, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
            parts.extend(p["text"]
                         for p in m.content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)
