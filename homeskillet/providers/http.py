"""What every HTTP connector shares: one pooled ``httpx.AsyncClient`` per connector, and the
mapping from a provider's HTTP status to our error tree. Each provider module parses its own
error envelope into a message and calls ``raise_for_status``.
"""

from __future__ import annotations

import httpx

from ..errors import NoCapacity, ProviderAuthError, ProviderError, RateLimited

__all__ = ["make_client", "raise_for_status", "retry_after"]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


def make_client(base_url: str, headers: dict[str, str] | None = None, *,
                timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                client: httpx.AsyncClient | None = None) -> httpx.AsyncClient:
    """The injected client when given (tests, shared pools), else a new one for ``base_url``."""
    if client is not None:
        return client
    return httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers or {}, timeout=timeout,
                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))


def retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def raise_for_status(provider: str, status: int, message: str, *, retry_after_s: float | None = None,
                     capacity: bool = False) -> None:
    """Raise the error for a failed call; ``capacity`` marks a "nothing available" answer.

    ``message`` must come from the provider's envelope, never from our request (it may hold a key).
    """
    if capacity:
        raise NoCapacity(message, provider=provider, http_status=status)
    if status in (401, 403):
        raise ProviderAuthError(f"credential refused ({status}): {message}; check the pool's api key",
                                provider=provider, http_status=status)
    if status == 429:
        raise RateLimited(f"rate limited: {message}", provider=provider, retry_after_s=retry_after_s)
    raise ProviderError(f"HTTP {status}: {message}", provider=provider, http_status=status)
