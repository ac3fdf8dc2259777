"""State shared by every orchestrator on one NATS server, in JetStream KV, changed by compare-and-set.

``cas(kv, key, change)`` reads the key's value and revision, lets ``change`` compute the new value
(or raise to refuse, or return ``None`` to leave it alone) and writes it only if nobody wrote in
between (``kv.update(key, value, last=revision)``); on a conflict it reads again and retries. So
two processes never both act on the same old value: no budget is spent twice.

In one process, a lock per key queues writers so they do not all conflict with each other; the
CAS is what makes it hold across processes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
from collections.abc import Callable
from typing import TypeVar

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from .errors import HomeskilletError

__all__ = ["KvCell", "bucket_name", "key_token", "open_bucket"]

T = TypeVar("T")
_SAFE = re.compile(r"^[A-Za-z0-9_\-=]{1,64}$")


def bucket_name(prefix: str, what: str) -> str:
    """``hs-ledger`` for the default prefix; ``<prefix>-ledger`` for a private deployment or test."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"{prefix}-{what}")


def key_token(name: str) -> str:
    """A tenant name as one KV key token: itself when safe, else a stable digest."""
    return name if _SAFE.match(name) else "h" + hashlib.sha256(name.encode()).hexdigest()[:40]


async def open_bucket(js: JetStreamContext, name: str, *, max_age_s: float = 0.0) -> KeyValue:
    """The bucket, created on first use (history 1: only the latest value matters)."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=max_age_s or None,
                                                        storage=StorageType.FILE))
    except nats.js.errors.BadRequestError:  # another instance created it first, maybe with other limits
        return await js.key_value(name)


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting


class KvCell:
    """Compare-and-set over one bucket; values are bytes, decoded by the caller."""

    def __init__(self, kv: KeyValue, name: str, *, max_attempts: int = 200) -> None:
        self.kv, self.name = kv, name
        self.max_attempts = max_attempts
        self._locks: dict[str, _KeyLock] = {}

    async def read(self, key: str) -> tuple[bytes | None, int]:
        try:
            entry = await self.kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        return entry.value, entry.revision or 0

    async def cas(self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        """Apply ``change`` atomically; returns what ``change`` returned beside the new value.
        ``change`` may raise (nothing is written) and must be pure: it can run more than once."""
        held = self._locks.get(key)
        if held is None:
            held = self._locks[key] = _KeyLock()
        held.users += 1
        try:
            async with held.lock:
                return await self._cas(key, change)
        finally:
            held.users -= 1
            if held.users == 0:  # nobody holds or waits: one lock per busy key, not one per tenant ever seen
                del self._locks[key]

    async def _cas(self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        for attempt in range(self.max_attempts):
            raw, revision = await self.read(key)
            new, result = change(raw)
            if new is None:
                return result
            try:
                await self.kv.update(key, new, last=revision)
                return result
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another instance wrote first: back off a little (spreads the contenders), re-read.
                await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))
        raise HomeskilletError(f"shared state {self.name}/{key} stayed contended for "
                               f"{self.max_attempts} attempts; try again")
