"""The strike dispatcher: sends a Strike to its pool over NATS and waits for the result.

All replies come back on one wildcard inbox subscription (as nats-py's own request does), so a
strike costs one publish and one message. A host running a long strike sends heartbeats; a
strike that stays silent past ``silence_ms`` is lost (the host died or was cut off), and "no
responders" means no host serves the pool at all. Both raise ``StrikeFailed`` at once, so the
orchestrator can move the fragment to the next fallback step.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .errors import StrikeFailed
from .subjects import Subjects
from .wire import Strike, StrikeResult, decode_strike_result, encode
from .worker import HEARTBEAT_HEADER

__all__ = ["Dispatcher"]


class _Pending:
    __slots__ = ("deadline", "fut", "last_seen", "pool")

    def __init__(self, fut: asyncio.Future[StrikeResult], pool: str, deadline: float) -> None:
        self.fut, self.pool, self.deadline = fut, pool, deadline
        self.last_seen = time.monotonic()


class Dispatcher:
    def __init__(self, nc: NATS, subjects: Subjects, *, silence_ms: int = 1500) -> None:
        self.nc, self.subjects = nc, subjects
        self.silence = silence_ms / 1000.0
        self._inbox = f"{subjects.inbox}.{nc.client_id}.{id(self):x}"
        self._ids = itertools.count(1)
        self._pending: dict[str, _Pending] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for p in self._pending.values():
            if not p.fut.done():
                p.fut.set_exception(StrikeFailed("the dispatcher stopped"))

    async def _on_reply(self, msg: Msg) -> None:
        p = self._pending.get(msg.subject.rsplit(".", 1)[-1])
        if p is None or p.fut.done():
            return
        headers = msg.headers or {}
        if headers.get(HEARTBEAT_HEADER):
            p.last_seen = time.monotonic()
        elif headers.get("Status") == "503":
            p.fut.set_exception(StrikeFailed(f"no worker serves pool {p.pool} (no responders)", term="capacity"))
        else:
            try:
                p.fut.set_result(decode_strike_result(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                p.fut.set_exception(StrikeFailed(f"pool {p.pool} sent an unreadable result: {exc}"))

    def _watch(self, key: str) -> None:
        p = self._pending.get(key)
        if p is None or p.fut.done():
            return
        now = time.monotonic()
        if now >= p.deadline:
            p.fut.set_exception(StrikeFailed(f"pool {p.pool} did not finish before the deadline",
                                             term="qos.hard_deadline_ms"))
            return
        quiet = now - p.last_seen
        if quiet >= self.silence:
            p.fut.set_exception(StrikeFailed(f"pool {p.pool} went silent for {quiet * 1000:.0f} ms mid-strike"))
            return
        asyncio.get_running_loop().call_later(min(self.silence - quiet, p.deadline - now) + 0.001,
                                              self._watch, key)

    async def strike(self, strike: Strike, timeout_s: float) -> StrikeResult:
        """Send ``strike`` and return its result; StrikeFailed if it is lost or late."""
        key = format(next(self._ids), "x")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[StrikeResult] = loop.create_future()
        p = _Pending(fut, strike.pool, time.monotonic() + timeout_s)
        self._pending[key] = p
        try:
            await self.nc.publish(self.subjects.strike(strike.pool), encode(strike), reply=f"{self._inbox}.{key}")
            loop.call_later(min(self.silence, timeout_s) + 0.001, self._watch, key)
            return await fut
        finally:
            del self._pending[key]
