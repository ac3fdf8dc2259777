"""The strike dispatcher: sends a Strike to its pool over NATS and waits for the result.

All replies come back on one wildcard inbox subscription (as nats-py's own request does), so a
strike costs one publish and one message. A host running a long strike sends heartbeats; a
strike that stays silent past ``silence_ms`` is lost (the host died or was cut off), and "no
responders" means no host serves the pool at all. Both raise ``StrikeFailed`` at once, so the
orchestrator can move the fragment to the next fallback step.

A streamed strike (``on_chunk`` given) also gets ``StrikeChunk`` messages on its inbox: each is
proof of life, and its text goes to ``on_chunk`` in order, exactly once. A chunk past a gap (a
lost message) stops the live text; the StrikeOk's whole text then fills in whatever did not come,
which is also how a host that does not stream (wire version 1) is served: one piece at the end.
A strike whose caller goes away (the client left) is cancelled at its pool.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .errors import StrikeFailed
from .subjects import Subjects
from .telemetry import get_logger
from .wire import (
    CancelStrike,
    Strike,
    StrikeChunk,
    StrikeOk,
    StrikeResult,
    Verdict,
    Verdicts,
    decode_strike_reply,
    encode,
)
from .worker import HEARTBEAT_HEADER

__all__ = ["Dispatcher", "OnChunk"]

OnChunk = Callable[[str], None]  # receives a streamed strike's text, in order, once

log = get_logger("homeskillet.strike")
_VERDICTS_PER_MESSAGE = 256  # keeps a burst's message far below any max_payload


class _Pending:
    __slots__ = ("deadline", "emitted", "fut", "gap", "last_seen", "on_chunk", "pool")

    def __init__(self, fut: asyncio.Future[StrikeResult], pool: str, deadline: float,
                 on_chunk: OnChunk | None = None) -> None:
        self.fut, self.pool, self.deadline, self.on_chunk = fut, pool, deadline, on_chunk
        self.last_seen = time.monotonic()
        self.emitted = 0  # characters handed to on_chunk
        self.gap = False  # a chunk went missing: the rest comes from the result

    def chunk(self, c: StrikeChunk) -> None:
        if self.on_chunk is None or self.gap:
            return
        end = c.offset + len(c.text)
        if c.offset > self.emitted:
            self.gap = True
            log.warning("strike_chunk_gap", pool=self.pool, strike_id=c.strike_id, expected=self.emitted,
                        got=c.offset)
        elif end > self.emitted:
            self._emit(c.text[self.emitted - c.offset:])

    def finish(self, result: StrikeResult) -> None:
        if self.on_chunk is not None and isinstance(result, StrikeOk) and len(result.text) > self.emitted:
            self._emit(result.text[self.emitted:])

    def _emit(self, text: str) -> None:
        self.emitted += len(text)
        assert self.on_chunk is not None
        try:
            self.on_chunk(text)
        except Exception:  # the receiver's bug must not stop the inbox
            log.exception("strike_chunk_receiver_failed", pool=self.pool)


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
        self._cancels: set[asyncio.Future[None]] = set()

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
                reply = decode_strike_reply(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                p.fut.set_exception(StrikeFailed(f"pool {p.pool} sent an unreadable result: {exc}"))
                return
            if isinstance(reply, StrikeChunk):
                p.last_seen = time.monotonic()
                p.chunk(reply)
            else:
                p.finish(reply)
                p.fut.set_result(reply)

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

    async def strike(self, strike: Strike, timeout_s: float, on_chunk: OnChunk | None = None) -> StrikeResult:
        """Send ``strike`` and return its result; StrikeFailed if it is lost or late. With
        ``on_chunk``, the strike streams and its text goes there as it comes (all of it, before
        this returns a StrikeOk)."""
        key = format(next(self._ids), "x")
        fut: asyncio.Future[StrikeResult] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        p = _Pending(fut, strike.pool, now + timeout_s, on_chunk)
        self._pending[key] = p
        if on_chunk is not None and not strike.stream:
            strike = msgspec.structs.replace(strike, stream=True)
        try:
            # Armed first: a publish that waits on a full outgoing buffer still counts as silence.
            self._arm(min(p.deadline, now + self.silence))
            await self.nc.publish(self.subjects.strike(strike.pool), encode(strike), reply=f"{self._inbox}.{key}")
            return await fut
        except asyncio.CancelledError:
            if fut.cancelled() or not fut.done():  # the caller left (a client hung up): stop the work at the pool
                self._cancel_soon(strike)
            raise
        finally:
            del self._pending[key]

    def _cancel_soon(self, strike: Strike) -> None:
        msg = encode(CancelStrike(strike_id=strike.strike_id, pool=strike.pool, reason="the caller left"))

        async def send() -> None:
            try:
                await self.nc.publish(self.subjects.agent(strike.pool), msg)
            except Exception as exc:
                log.debug("cancel_publish_failed", pool=strike.pool, error=repr(exc))

        task = asyncio.ensure_future(send())
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
