"""Helpers the provider-specific contract tests share: a seeded simulator served on a real port,
and a Retry-After header added to its 429s (Vast.ai and RunPod do not promise one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from homeskillet.sims.base import FaultPlan, SimConfig
from homeskillet.testing import serve_asgi


def config(*, seed: int = 3, time_scale: float = 0.0, capacity: int = 8, extra: dict[str, Any] | None = None,
           **faults: Any) -> SimConfig:
    return SimConfig(seed=seed, time_scale=time_scale, capacity=capacity, faults=FaultPlan(**faults),
                     extra=extra or {})


@contextmanager
def served(app: Any) -> Iterator[str]:
    with serve_asgi(app, "/_sim/state") as url:
        yield url


class RetryAfter:
    """ASGI wrapper: every 429 the simulator answers carries ``Retry-After: <seconds>``."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app, self.seconds, self.state = app, seconds, app.state

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        async def send_with(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message["status"] == 429:
                headers = [*message.get("headers", []), (b"retry-after", f"{self.seconds:g}".encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with if scope["type"] == "http" else send)
