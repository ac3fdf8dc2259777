"""One interface for every provider: a Connector is to a provider what an httpx transport is
to HTTP. Each connector declares what it can do, and for what it cannot, the reason, as data;
asking for an unsupported feature raises one error listing every reason.

Connectors take an injected ``httpx.AsyncClient`` where they speak HTTP, so a simulator (an ASGI
app) can stand in for the real service without the rest of the code knowing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar, TypeVar

import msgspec

from ..errors import HomeskilletError
from ..wire import Message

__all__ = [
    "FEATURES",
    "Connector",
    "InferRequest",
    "InferResult",
    "Unsupported",
    "connector_class",
    "register",
]

FEATURES = ("infer", "stream", "allocate", "release", "metrics", "health", "preemptible", "bid")


class Unsupported(HomeskilletError):
    code = "unsupported"
    status = 501


class InferRequest(msgspec.Struct, kw_only=True):
    strike_id: str
    model: str
    prompt: str
    context: list[Message] = []
    max_tokens: int = 256
    temperature: float = 0.0
    deadline_ms: int = 0
    tenant: str = "default"


class InferResult(msgspec.Struct, kw_only=True):
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    billed_usd: float | None = None  # what the provider says it charged, when it says


class Connector:
    provider: ClassVar[str] = ""
    # feature -> why not; every feature in FEATURES not listed here is supported.
    unsupported: ClassVar[dict[str, str]] = {}

    def supports(self, feature: str) -> bool:
        return feature not in self.unsupported

    def require(self, *features: str) -> None:
        reasons = [f"{f}: {self.unsupported[f]}" for f in features if f in self.unsupported]
        if reasons:
            raise Unsupported(f"{self.provider} cannot do what was asked: " + "; ".join(reasons))

    async def infer(self, req: InferRequest) -> InferResult:
        self.require("infer")
        raise NotImplementedError

    def stream(self, req: InferRequest) -> AsyncIterator[str]:
        self.require("stream")
        raise NotImplementedError

    async def health(self) -> dict[str, Any]:
        return {"ok": True}

    async def close(self) -> None:
        return None


_REGISTRY: dict[str, type[Connector]] = {}
C = TypeVar("C", bound=type[Connector])


def register(name: str) -> Callable[[C], C]:
    """Class decorator: register a connector under its provider name; duplicates are refused."""

    def deco(cls: C) -> C:
        if name in _REGISTRY:
            raise ValueError(f"a connector for {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.provider = name
        _REGISTRY[name] = cls
        return cls

    return deco


def connector_class(name: str) -> type[Connector]:
    if name not in _REGISTRY:
        import importlib

        try:
            importlib.import_module(f"homeskillet.providers.{name}")
        except ModuleNotFoundError:
            pass
    try:
        return _REGISTRY[name]
    except KeyError:
        raise HomeskilletError(f"no connector for provider {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
