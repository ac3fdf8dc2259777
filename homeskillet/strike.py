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
import math
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .errors import StrikeFailed
from .subjects import Subjects
from .telemetry import get_logger
from .wire import Strike, StrikeResult, Verdict, Verdicts, decode_strike_result, encode
from .worker import HEARTBEAT_HEADER

__all__ = ["Dispatcher"]

log = get_logger("homeskillet.strike")
_VERDICTS_PER_MESSAGE = 256  # keeps a burst's message far below any max_payload


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
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = math.inf  # monotonic time the watch timer fires at
        self._verdicts: dict[str, list[Verdict]] = {}  # by pool, waiting for the end of the iteration
        self._verdicts_ready = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)
        self._publisher = asyncio.create_task(self._publish_verdicts(), name="verdicts")

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        if self._publisher is not None:
            self._publisher.cancel()
        await self._flush_verdicts()
        if self._watch is not None:
            self._watch.cancel()
        for p in self._pending.values():
            if not p.fut.done():
                p.fut.set_exception(StrikeFailed("the dispatcher stopped"))

    # --- verdicts --------------------------------------------------------------------------------

    def verdict(self, verdict: Verdict) -> None:
        """Send the orchestrator's verdict on a strike to its pool's hosts (published at the end
        of this loop iteration, with the pool's other verdicts)."""
        if not self._verdicts:
            self._verdicts_ready.set()
        self._verdicts.setdefault(verdict.pool, []).append(verdict)

    async def _publish_verdicts(self) -> None:
        while True:
            await self._verdicts_ready.wait()
            self._verdicts_ready.clear()
            await self._flush_verdicts()

    async def _flush_verdicts(self) -> None:
        batch, self._verdicts = self._verdicts, {}
        for pool, verdicts in batch.items():
            for i in range(0, len(verdicts), _VERDICTS_PER_MESSAGE):
                chunk = verdicts[i : i + _VERDICTS_PER_MESSAGE]
                try:
                    await self.nc.publish(self.subjects.verdict(pool),
                                          encode(chunk[0] if len(chunk) == 1 else Verdicts(verdicts=chunk)))
                except Exception as exc:  # a lost verdict costs the pool's record one entry, not a query
                    log.warning("verdict_publish_failed", pool=pool, verdicts=len(chunk), error=repr(exc))

    # --- strikes ---------------------------------------------------------------------------------

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

    def _arm(self, at: float) -> None:
        """Make sure the watch runs by ``at`` (monotonic); an earlier armed watch already does."""
        if at >= self._watch_at:
            return
        if self._watch is not None:
            self._watch.cancel()
        self._watch_at = at
        self._watch = asyncio.get_running_loop().call_later(max(0.0, at - time.monotonic()) + 0.001, self._check)

    def _check(self) -> None:
        """Fail every strike past its deadline or silent too long; re-arm for the next that could be."""
        self._watch, self._watch_at = None, math.inf
        now = time.monotonic()
        due = math.inf
        for p in self._pending.values():
            if p.fut.done():
                continue
            quiet = now - p.last_seen
            if now >= p.deadline:
                p.fut.set_exception(StrikeFailed(f"pool {p.pool} did not finish before the deadline",
                                                 term="qos.hard_deadline_ms"))
            elif quiet >= self.silence:
                p.fut.set_exception(StrikeFailed(f"pool {p.pool} went silent for {quiet * 1000:.0f} ms mid-strike"))
            else:
                due = min(due, p.deadline, p.last_seen + self.silence)
        if due < math.inf:
            self._arm(due)

    async def strike(self, strike: Strike, timeout_s: float) -> StrikeResult:
        """Send ``strike`` and return its result; StrikeFailed if it is lost or late."""
        key = format(next(self._ids), "x")
        fut: asyncio.Future[StrikeResult] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        p = _Pending(fut, strike.pool, now + timeout_s)
        self._pending[key] = p
        try:
            await self.nc.publish(self.subjects.strike(strike.pool), encode(strike), reply=f"{self._inbox}.{key}")
            self._arm(min(p.deadline, now + self.silence))
            return await fut
        finally:
            del self._pending[key]
