"""Accepted queries survive their orchestrator: the JetStream stream ``HS_PARKED``.

Two kinds of query are recorded there, the same way:

- **every query accepted over NATS** (it has a reply subject a peer can answer): recorded when the
  orchestrator starts serving it, with a plain publish the stream captures, no ack asked for
  (``accept``); the record is purged by its own subject after the answer or error has been sent
  (``finish``), again without waiting. The hot path pays two publishes, no round trip.
- a query of any ingress whose fragment reaches the covenant's ``queue`` step (``park``): recorded
  and acknowledged before the fragment waits; deleted when the query ends (``done``).

Who serves a surviving record: each orchestrator keeps one liveness key ``live.<instance>`` in the
KV bucket ``hs-parked-claims`` (TTL ``claim_ttl_s``), put every third of the TTL by its own task;
that one write renews every record it holds, however many. A record whose owner's key has expired
is orphaned: any orchestrator's sweep (at start and every third of the TTL) takes it with an atomic
KV ``create`` of ``q.<record>`` (one winner; the winner renews that claim while serving), re-serves
it under the same ``query_id`` within what is left of its hard deadline, and sends the answer or
error to the caller's original reply subject.

A live owner is never taken over, however slow its query: its liveness does not depend on the
query. If its own loop stalled longer than the TTL (so a peer may have taken a record), it checks
the claims of its records before answering and leaves a taken one to the taker (``may_answer``).
Records the owner has finished but whose delete was lost are removed by its own sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from .ids import new_id
from .kvstate import ensure_stream, open_bucket, retry_transient
from .subjects import Subjects, token
from .telemetry import get_logger
from .wire import Query, Wire, encode

__all__ = ["ParkedQuery", "ParkingLot", "Ticket"]

log = get_logger("homeskillet.parking")


class ParkedQuery(Wire, tag="parked", kw_only=True):
    query: Query
    reply: str = ""  # the caller's NATS reply subject; "" when it came over HTTP or MCP
    owner: str  # the orchestrator instance that accepted it
    parked_at_ms: int  # when it was accepted: its hard deadline counts from here
    record: str = ""  # the record's own id (subject token and claim key)


_parked = msgspec.json.Decoder(ParkedQuery)
Resume = Callable[[ParkedQuery], Coroutine[Any, Any, None]]


class Ticket:
    """One record this instance holds: its own, or one it took over."""

    __slots__ = ("born", "queued", "rec", "seq", "taken", "task")

    def __init__(self, rec: ParkedQuery, seq: int = 0) -> None:
        self.rec, self.seq = rec, seq  # seq: known for records written with an ack (queue step, sweep)
        self.taken = False  # a record taken over from a dead owner: its claim is renewed per record
        self.queued = False  # made by the queue step (deleted by ``done``), not at accept
        self.born = time.monotonic()
        self.task = asyncio.current_task()  # the task serving it (cancelled if a peer took it)


class ParkingLot:
    def __init__(self, nc: NATS, subjects: Subjects, instance: str, *, claim_ttl_s: float = 10.0,
                 max_age_s: float = 7 * 86400, replicas: int = 0, journal: bool = True) -> None:
        self.nc, self.subjects, self.instance = nc, subjects, instance
        self.js = nc.jetstream()
        self.claim_ttl_s, self.max_age_s, self.replicas = claim_ttl_s, max_age_s, replicas
        self.journal = journal  # record every NATS query at accept (off: only the queue step records)
        self.stream = subjects.parked_stream
        self.held: dict[str, Ticket] = {}  # query_id -> the record this instance holds for it
        self._records: set[str] = set()  # the record ids of ``held``
        self._yielded: set[str] = set()  # query ids given up to a peer after a lapse (never answered here)
        self.taken_over = 0  # records this instance took from dead owners
        self.sweeps = 0  # sweeps done (tests wait on it)
        self._kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._last_beat = 0.0  # monotonic time of the last liveness write that landed
        self._lapsed_at = 0.0  # monotonic time a stall longer than the TTL was noticed (0: never)
        self._discard = f"_INBOX.hs-discard.{new_id()}"  # reply subject nobody reads (fire-and-forget)

    async def start(self, resume: Resume) -> None:
        """Create (or scale) the stream and claims bucket; take over orphaned records now and later."""
        await ensure_stream(self.js, StreamConfig(
            name=self.stream, subjects=[f"{self.subjects.parked}.>"], storage=StorageType.FILE,
            max_age=self.max_age_s), replicas=self.replicas)
        self._kv = await open_bucket(self.js, f"hs-parked-claims-{token(self.subjects.prefix)}",
                                     max_age_s=self.claim_ttl_s, replicas=self.replicas)
        self._resume = resume
        # A stream just made with 3 replicas answers once its leader is elected: retried, not failed.
        await retry_transient("parked claims", self._beat, op_timeout_s=5.0, patience_s=30.0)
        await retry_transient("parked records", self.sweep, op_timeout_s=30.0, patience_s=60.0)
        self._loops = [asyncio.create_task(self._every_third_of_ttl(self._beat, "beat"), name="parking-beat"),
                       asyncio.create_task(self._every_third_of_ttl(self.sweep, "sweep"),
                                           name="parking-sweeper")]

    async def stop(self) -> None:
        """Stop renewing and say we are gone (peers take our unanswered records at their next sweep)."""
        for t in (*self._loops, *self._tasks):
            t.cancel()
        if self._kv is not None and self.nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._kv.delete(self._live_key(self.instance)), 2.0)

    @staticmethod
    def _live_key(instance: str) -> str:
        return f"live.{token(instance)}"

    def _subject(self, rec: ParkedQuery) -> str:
        return f"{self.subjects.parked}.{token(rec.record)}"

    # --- recording and forgetting ----------------------------------------------------------------

    def _hold(self, query_id: str, ticket: Ticket) -> None:
        # Registered before the record is published, so a sweep never takes a record being served
        # here for a stale one of ours.
        self.held[query_id] = ticket
        self._records.add(ticket.rec.record)

    def _release(self, query_id: str) -> Ticket | None:
        ticket = self.held.pop(query_id, None)
        if ticket is not None:
            self._records.discard(ticket.rec.record)
        return ticket

    async def accept(self, query: Query, reply: str) -> None:
        """Record a NATS query at accept: a plain publish the stream captures, no ack asked for (no
        reply message, no future; ``finish`` purges by the record's subject)."""
        if not self.journal or not reply or query.query_id in self.held or self._kv is None:
            return  # not answerable by a peer, already held, or not started
        rec = ParkedQuery(query=query, reply=reply, owner=self.instance, parked_at_ms=int(time.time() * 1000),
                          record=new_id())
        self._hold(query.query_id, Ticket(rec))
        try:
            await self.nc.publish(self._subject(rec), encode(rec))
        except Exception as exc:  # disconnected, buffer full: serve it anyway, just not durably
            log.warning("query_not_recorded", query_id=query.query_id, error=repr(exc))

    async def park(self, query: Query, reply: str) -> None:
        """The queue step: make the query durable before its fragment waits (idempotent per query)."""
        if query.query_id in self.held:
            return
        rec = ParkedQuery(query=query, reply=reply, owner=self.instance, parked_at_ms=int(time.time() * 1000),
                          record=new_id())
        ack = await self.js.publish(self._subject(rec), encode(rec), stream=self.stream)
        ticket = Ticket(rec, seq=ack.seq)
        ticket.queued = True
        self._hold(query.query_id, ticket)
        log.info("query_parked", query_id=query.query_id, seq=ack.seq)

    async def done(self, query_id: str) -> None:
        """The query ended (the orchestrator's side): forget a record the queue step made. Records
        made at accept are finished by the ingress after it has replied (``finish``)."""
        ticket = self.held.get(query_id)
        if ticket is not None and ticket.queued:
            await self.finish(query_id)

    async def finish(self, query_id: str) -> None:
        """The caller has its answer or error: delete the record (fire-and-forget)."""
        ticket = self._release(query_id)
        if ticket is None:
            return
        if ticket.seq:
            await self._delete(ticket.seq)
        else:
            await self._api(f"STREAM.PURGE.{self.stream}", {"filter": self._subject(ticket.rec)})
        # A taker's claim is left to expire (not deleted): an owner that was stalled and comes
        # back within the TTL finds it and does not answer a second time.

    async def _delete(self, seq: int) -> None:
        await self._api(f"STREAM.MSG.DELETE.{self.stream}", {"seq": seq, "no_erase": True})

    async def _api(self, what: str, body: dict[str, Any]) -> None:
        # A JetStream API request with nobody waiting for its reply: no round trip on the hot path.
        with contextlib.suppress(Exception):
            await self.nc.publish(f"{self.js._prefix}.{what}", json.dumps(body).encode(), reply=self._discard)

    def _suspect(self, ticket: Ticket) -> bool:
        # Held while our liveness lapsed (noticed, or going on now): a peer may have taken it.
        stalled = bool(self._last_beat) and time.monotonic() - self._last_beat > self.claim_ttl_s
        return not ticket.taken and (stalled or ticket.born < self._lapsed_at)

    async def _taken_by_peer(self, ticket: Ticket) -> str | None:
        """Settle who serves a suspect record, through its claim key (the one arbiter): gone from the
        stream means a taker answered it; else we ``create`` its claim (then it is ours, renewed
        per record from now on) or find a peer's. None: keep serving; cannot tell counts as ours
        (answering twice beats not answering)."""
        assert self._kv is not None
        key = f"q.{token(ticket.rec.record)}"
        try:
            try:
                await asyncio.wait_for(self.js.get_msg(self.stream, subject=self._subject(ticket.rec)), 2.0)
            except NotFoundError:
                return "a peer (it has answered and deleted the record)"
            try:
                await asyncio.wait_for(self._kv.create(key, self.instance.encode()), 2.0)
                ticket.taken = True
                return None
            except KeyWrongLastSequenceError:
                peer = ((await asyncio.wait_for(self._kv.get(key), 2.0)).value or b"").decode()
                if peer == self.instance:
                    ticket.taken = True
                    return None
                return peer or "a peer"
        except Exception:
            return None

    async def still_ours(self, query_id: str) -> bool:
        """False when a peer took this query over while our loop was stalled (it strikes, charges
        and answers; we do none of it). Costs nothing unless our liveness lapsed while it was held."""
        if query_id in self._yielded:
            return False
        ticket = self.held.get(query_id)
        if ticket is None or self._kv is None or not self._suspect(ticket):
            return True
        peer = await self._taken_by_peer(ticket)
        if peer is None:
            return True
        log.warning("query_taken_by_peer", query_id=query_id, peer=peer)
        self._release(query_id)
        self._yielded.add(query_id)
        return False

    async def may_answer(self, query_id: str) -> bool:
        """``still_ours``, asked by the ingress before it replies (the last time it is asked)."""
        ours = await self.still_ours(query_id)
        self._yielded.discard(query_id)
        return ours

    async def _yield_taken(self) -> None:
        """After a lapse: stop serving what a peer took (it serves and answers those now)."""
        for query_id, ticket in list(self.held.items()):
            if not ticket.rec.reply or not self._suspect(ticket):
                continue  # an HTTP/MCP caller waits on us, not on a reply subject a peer can use
            peer = await self._taken_by_peer(ticket)
            if peer is not None and self.held.get(query_id) is ticket:
                log.warning("query_yielded_to_peer", query_id=query_id, peer=peer)
                self._release(query_id)
                self._yielded.add(query_id)
                if ticket.task is not None and ticket.task is not asyncio.current_task():
                    ticket.task.cancel()

    # --- liveness and takeover -------------------------------------------------------------------

    async def _beat(self) -> None:
        assert self._kv is not None
        now = time.monotonic()
        if self._last_beat and now - self._last_beat > self.claim_ttl_s:
            self._lapsed_at = now  # our key may have expired: peers may have taken records
            log.warning("parking_liveness_lapsed", stalled_s=round(now - self._last_beat, 2))
        await asyncio.wait_for(self._kv.put(self._live_key(self.instance), self.instance.encode()),
                               self.claim_ttl_s / 3)
        for t in [t for t in self.held.values() if t.taken]:  # records taken over: one claim each
            await self._kv.put(f"q.{token(t.rec.record)}", self.instance.encode())
        if self._lapsed_at == now:
            await self._yield_taken()
        self._last_beat = now

    async def _every_third_of_ttl(self, work: Callable[[], Awaitable[object]], what: str) -> None:
        while True:
            await asyncio.sleep(self.claim_ttl_s / 3)
            try:
                await work()
            except Exception as exc:  # a NATS reconnect must not end the renewals or the sweeps
                log.warning(f"parking_{what}_failed", error=repr(exc))

    async def _alive(self, owner: str, seen: dict[str, bool]) -> bool:
        assert self._kv is not None
        if owner not in seen:
            try:
                await self._kv.get(self._live_key(owner))
                seen[owner] = True
            except KeyNotFoundError:
                seen[owner] = False
        return seen[owner]

    async def sweep(self) -> int:
        """Take over every record whose owner is gone; returns how many were taken."""
        assert self._kv is not None
        taken, seq, seen = 0, 1, {self.instance: True}
        now_ms = int(time.time() * 1000)
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=f"{self.subjects.parked}.>", next=True)
            except NotFoundError:
                self.sweeps += 1
                return taken
            seq = (raw.seq or seq) + 1
            try:
                rec = _parked.decode(raw.data or b"")
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("parked_record_unreadable", seq=raw.seq)
                continue
            rec.record = rec.record or rec.query.query_id  # a record written before record ids
            if rec.record in self._records:
                continue  # held here, being served
            if rec.owner == self.instance:
                await self._delete(raw.seq or 0)  # ours, finished, its delete lost
                continue
            if rec.parked_at_ms > now_ms - self.claim_ttl_s * 1000 or await self._alive(rec.owner, seen):
                continue  # its owner lives (a record younger than the TTL is itself a sign of life)
            try:
                await self._kv.create(f"q.{token(rec.record)}", self.instance.encode())
            except KeyWrongLastSequenceError:
                continue  # another live instance took it
            ticket = Ticket(rec, seq=raw.seq or 0)
            ticket.taken = True
            self._hold(rec.query.query_id, ticket)
            taken += 1
            self.taken_over += 1
            log.warning("parked_query_taken_over", query_id=rec.query.query_id, previous_owner=rec.owner,
                        seq=raw.seq)
            task = asyncio.create_task(self._resume(rec), name=f"resume:{rec.query.query_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

