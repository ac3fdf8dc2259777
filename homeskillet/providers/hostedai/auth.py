"""hosted.ai's token flow (§9): trade the API key for a JWT once, sign every request with it until
shortly before it expires, then fetch a new one. Concurrent strikes share one fetch.

The expiry is counted on our own clock from ``expires_in``, never from the token's claims, so a
provider clock that disagrees with ours cannot make us use a stale token for long: when the
provider still says ``token_expired``, the caller ``invalidate``s and asks again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from .wire import TokenGrant

__all__ = ["TokenSource"]


class TokenSource:
    def __init__(self, fetch: Callable[[], Awaitable[TokenGrant]], *, clock: Callable[[], float] = time.monotonic,
                 margin_s: float = 30.0) -> None:
        self._fetch, self._clock, self.margin_s = fetch, clock, margin_s
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self.fetched = 0  # tokens obtained over this connector's life (tests and metrics read it)

    def _fresh(self) -> str | None:
        return self._token if self._token is not None and self._clock() < self._renew_at else None

    async def get(self) -> str:
        token = self._fresh()
        if token is not None:
            return token
        async with self._lock:  # many strikes waking at once fetch one token
            token = self._fresh()
            if token is None:
                grant = await self._fetch()
                # renew a little early: by the margin, or a tenth of a short lifetime
                early = min(self.margin_s, grant.expires_in / 10)
                self._token, self._renew_at = grant.access_token, self._clock() + grant.expires_in - early
                self.fetched += 1
                token = grant.access_token
            return token

    def invalidate(self, token: str) -> None:
        """The provider refused ``token``; forget it unless another strike has already replaced it."""
        if self._token == token:
            self._token = None
