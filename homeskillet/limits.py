"""Per-tenant rate limits (requests and tokens per minute), shared by every orchestrator.

One JetStream KV key per tenant (bucket ``hs-limits``) holds the current one-minute window: its
start minute, requests admitted and tokens used. ``admit`` counts a request and its prompt
tokens, or refuses with ``TenantRateLimited`` (429, ``retry_after_s`` = seconds to the next
window) writing nothing; ``spend`` adds the completion tokens once the answer is in. Both are one
compare-and-set, so concurrent requests on several instances cannot overshoot a limit. A fixed
window is simple and exact; a burst at a window edge may see up to twice the rate in 60 s.

Tenants without ``requests_per_minute`` / ``tokens_per_minute`` never touch the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext

from .budgets import limits_for
from .config import TenantSettings
from .errors import TenantRateLimited
from .kvstate import KvCell, bucket_name, key_token, open_bucket

__all__ = ["RateLimiter", "Window"]


class Window(msgspec.Struct, kw_only=True):
    minute: int = 0  # epoch minute the counts belong to
    requests: int = 0
    tokens: int = 0


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(Window)


class RateLimiter:
    def __init__(self, cell: KvCell, tenants: dict[str, TenantSettings], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.cell, self.tenants, self.clock = cell, tenants, clock

    @classmethod
    async def open(cls, js: JetStreamContext, prefix: str, tenants: dict[str, TenantSettings], *,
                   replicas: int = 0) -> RateLimiter:
        name = bucket_name(prefix, "limits")
        return cls(KvCell(await open_bucket(js, name, max_age_s=3600.0, replicas=replicas), name), tenants)

    def _limits(self, tenant: str) -> TenantSettings | None:
        t = limits_for(self.tenants, tenant)
        if t is None or (t.requests_per_minute is None and t.tokens_per_minute is None):
            return None
        return t

    async def admit(self, tenant: str, prompt_tokens: int) -> None:
        limits = self._limits(tenant)
        if limits is None:
            return
        now = self.clock()
        minute = int(now // 60)
        retry = 60.0 - now % 60

        def change(raw: bytes | None) -> tuple[bytes | None, None]:
            w = _dec.decode(raw) if raw else Window()
            if w.minute != minute:
                w = Window(minute=minute)
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            if rpm is not None and w.requests + 1 > rpm:
                raise TenantRateLimited(f"tenant {tenant!r} is over its limit of {rpm} requests per minute; "
                                        f"retry in {retry:.0f} s", retry_after_s=retry,
                                        term="tenants.requests_per_minute")
            if tpm is not None and w.tokens + prompt_tokens > tpm:
                raise TenantRateLimited(f"tenant {tenant!r} is over its limit of {tpm} tokens per minute "
                                        f"({w.tokens} used, this prompt has {prompt_tokens}); retry in {retry:.0f} s",
                                        retry_after_s=retry, term="tenants.tokens_per_minute")
            w.requests += 1
            w.tokens += prompt_tokens
            return _enc.encode(w), None

        await self.cell.cas(key_token(tenant), change)

    async def spend(self, tenant: str, tokens: int) -> None:
        """Count tokens used after admission (the completion); never refuses."""
        if tokens <= 0 or self._limits(tenant) is None:
            return
        minute = int(self.clock() // 60)

        def change(raw: bytes | None) -> tuple[bytes | None, None]:
            w = _dec.decode(raw) if raw else Window()
            if w.minute != minute:
                w = Window(minute=minute)
            w.tokens += tokens
            return _enc.encode(w), None

        await self.cell.cas(key_token(tenant), change)
