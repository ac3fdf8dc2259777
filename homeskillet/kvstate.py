"""State shared by every orchestrator on one NATS server or cluster, in JetStream, changed by
compare-and-set; and the one place streams and KV buckets are created.

``cas(kv, key, change)`` reads the key's value and revision, lets ``change`` compute the new value
(or raise to refuse, or return ``None`` to leave it alone) and writes it only if nobody wrote in
between (``kv.update(key, value, last=revision)``); on a conflict it reads again and retries. So
two processes never both act on the same old value: no budget is spent twice.

In one process, a lock per key queues writers so they do not all conflict with each other; the
CAS is what makes it hold across processes.

**Surviving a node.** Every stream and bucket is made through ``ensure_stream`` / ``open_bucket``
with ``replicas``: 0 means min(3, what the cluster can place), so on a cluster of three or more
nodes everything has three replicas and a dead node costs one leader election, not the state.
A stream found with fewer replicas than wanted is scaled up (a stream update of
``num_replicas``); when that is refused it is said at start, once, with what to run. Each KV
operation is bounded by ``op_timeout_s`` and retried (the client reconnects to another node, the
stream elects a new leader) until ``patience_s``, so a node kill costs a query a few seconds at
most instead of stalling it on a dead leader. ``change`` must therefore be idempotent: a write
that timed out may have landed, and the retry then sees it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import re
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KeyValue

from .errors import HomeskilletError, StateUnavailable
from .telemetry import get_logger

__all__ = ["KvCell", "bucket_name", "ensure_stream", "key_token", "open_bucket",
           "retry_transient", "want_replicas"]

log = get_logger("homeskillet.kvstate")

T = TypeVar("T")
_SAFE = re.compile(r"^[A-Za-z0-9_\-=]{1,64}$")
DEFAULT_REPLICAS = 3
_TRANSIENT = (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError,
              nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError,
              nats.js.errors.ServiceUnavailableError, nats.js.errors.NoStreamResponseError)


def bucket_name(prefix: str, what: str) -> str:
    """``hs-ledger`` for the default prefix; ``<prefix>-ledger`` for a private deployment or test."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", f"{prefix}-{what}")


def key_token(name: str) -> str:
    """A tenant name as one KV key token: itself when safe, else a stable digest."""
    return name if _SAFE.match(name) else "h" + hashlib.sha256(name.encode()).hexdigest()[:40]


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    # A JetStream API error with a 5xx code: no leader yet, leader moved, system busy.
    return isinstance(exc, nats.js.errors.APIError) and not isinstance(exc, nats.js.errors.BadRequestError) \
        and (exc.code or 0) >= 500


async def retry_transient(what: str, op: Callable[[], Awaitable[T]], *, op_timeout_s: float = 1.0,
                          patience_s: float = 15.0) -> T:
    """``op()`` bounded by ``op_timeout_s``, retried with backoff on transient JetStream errors
    (timeouts, no responders, no leader) until ``patience_s``; then StateUnavailable."""
    end = time.monotonic() + patience_s
    pause = 0.05
    while True:
        try:
            async with asyncio.timeout(op_timeout_s):
                return await op()
        except Exception as exc:
            if not _transient(exc):
                raise
            if time.monotonic() + pause > end:
                raise StateUnavailable(f"shared state {what} did not answer for {patience_s:g}s ({exc!r}); "
                                       "is a quorum of the NATS cluster up? retry shortly") from None
            log.warning("state_retry", what=what, error=repr(exc))
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(1.0, pause * 2)


def want_replicas(js: JetStreamContext, configured: int = 0) -> int:
    """The replicas to ask for: ``configured`` when set, else 3 on a cluster (fewer are tried if the
    cluster cannot place 3) and 1 on a lone server."""
    if configured > 0:
        return configured
    info = getattr(js._nc, "_server_info", None) or {}
    return DEFAULT_REPLICAS if info.get("cluster") else 1


async def _replicas_now(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.config.num_replicas or 1)


async def _scale(js: JetStreamContext, stream: str, replicas: int, configured: int) -> None:
    """Raise an existing stream to ``replicas`` (migration of a single-replica deployment)."""
    have = await _replicas_now(js, stream)
    if have >= replicas:
        return
    last: Exception | None = None
    for r in _tries(replicas, configured, floor=have + 1):
        try:
            info = await js.stream_info(stream)
            info.config.num_replicas = r
            await js.update_stream(info.config)
            log.warning("stream_replicas_raised", stream=stream, was=have, now=r)
            return
        except nats.js.errors.APIError as exc:
            last = exc
    log.error("stream_under_replicated", stream=stream, replicas=have, wanted=replicas, error=str(last),
              fix=f"nats stream edit {stream} --replicas {replicas}")


def _tries(replicas: int, configured: int, *, floor: int = 1) -> list[int]:
    # A configured count is exact; the automatic one steps down to what the cluster can place.
    return [replicas] if configured > 0 else list(range(replicas, floor - 1, -1))


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig, *, replicas: int = 0) -> None:
    """Create the stream with the wanted replicas, or scale an existing one up to them."""
    assert cfg.name is not None
    want = want_replicas(js, replicas)
    try:
        await _scale(js, cfg.name, want, replicas)
        return
    except nats.js.errors.NotFoundError:
        pass
    last: Exception | None = None
    for r in _tries(want, replicas):
        cfg.num_replicas = r
        try:
            await js.add_stream(cfg)
            if r < want:
                log.warning("stream_fewer_replicas", stream=cfg.name, replicas=r, wanted=want)
            return
        except nats.js.errors.BadRequestError as exc:
            if "already in use" in str(exc):  # another instance created it at the same moment
                return await _scale(js, cfg.name, want, replicas)
            last = exc
        except nats.js.errors.APIError as exc:  # insufficient resources: fewer peers than replicas
            last = exc
    raise HomeskilletError(f"cannot create stream {cfg.name} with {want} replicas: {last}; set "
                           "nats_replicas to what the cluster can place, or start more JetStream nodes")


async def open_bucket(js: JetStreamContext, name: str, *, max_age_s: float = 0.0, replicas: int = 0) -> KeyValue:
    """The bucket (history 1: only the latest value matters), created on first use with the wanted
    replicas; an existing one with fewer is scaled up (see the module docstring)."""
    want = want_replicas(js, replicas)
    try:
        kv = await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    else:
        await _scale(js, f"KV_{name}", want, replicas)
        return kv
    last: Exception | None = None
    for r in _tries(want, replicas):
        try:
            return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=max_age_s or None,
                                                            storage=StorageType.FILE, replicas=r))
        except nats.js.errors.BadRequestError:  # another instance created it first, maybe with other limits
            return await js.key_value(name)
        except nats.js.errors.APIError as exc:
            last = exc
    raise HomeskilletError(f"cannot create KV bucket {name} with {want} replicas: {last}; set "
                           "nats_replicas to what the cluster can place, or start more JetStream nodes")


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holding or waiting


class KvCell:
    """Compare-and-set over one bucket; values are bytes, decoded by the caller."""

    def __init__(self, kv: KeyValue, name: str, *, max_attempts: int = 200, op_timeout_s: float = 1.0,
                 patience_s: float = 15.0) -> None:
        self.kv, self.name = kv, name
        self.max_attempts = max_attempts
        self.op_timeout_s, self.patience_s = op_timeout_s, patience_s
        self._locks: dict[str, _KeyLock] = {}

    async def _retry(self, key: str, op: Callable[[], Awaitable[T]]) -> T:
        return await retry_transient(f"{self.name}/{key}", op, op_timeout_s=self.op_timeout_s,
                                     patience_s=self.patience_s)

    async def read(self, key: str) -> tuple[bytes | None, int]:
        async def get() -> tuple[bytes | None, int]:
            try:
                entry = await self.kv.get(key)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                return None, 0
            return entry.value, entry.revision or 0
        return await self._retry(key, get)

    async def cas(self, key: str, change: Callable[[bytes | None], tuple[bytes | None, T]]) -> T:
        """Apply ``change`` atomically; returns what ``change`` returned beside the new value.
        ``change`` may raise (nothing is written) and must be pure and idempotent: it can run more
        than once, also on a value its own earlier, timed-out write produced."""
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
                await self._retry(key, functools.partial(self.kv.update, key, new, last=revision))
                return result
            except nats.js.errors.KeyWrongLastSequenceError:
                # Another instance wrote first: back off a little (spreads the contenders), re-read.
                await asyncio.sleep(random.uniform(0, 0.0005 * min(attempt + 1, 20)))
        raise HomeskilletError(f"shared state {self.name}/{key} stayed contended for "
                               f"{self.max_attempts} attempts; try again")
