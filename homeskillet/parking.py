"""The durable queue behind the covenant's ``queue`` fallback step: JetStream stream ``HS_PARKED``.

When a fragment reaches the ``queue`` step its query is written to the stream (once per query,
with the NATS reply subject of the caller) before the orchestrator waits for capacity. The
record is deleted only when the query has ended in an answer or an explicit error sent to the
caller. If the orchestrator dies first, the record survives it.

Who serves a surviving record: each record has a claim in the KV bucket ``hs-parked-claims``,
kept alive by the orchestrator that parked it (refreshed every ``claim_ttl_s / 3``). A claim that
has expired means its owner is gone; any orchestrator's sweep (at start and every ``claim_ttl_s``)
takes it over with an atomic KV ``create``, so exactly one re-serves the query, under the same
``query_id``, and sends the answer to the original caller's reply subject. Fragments of that query
that had already been served are served again (their results died with the old process).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from .subjects import Subjects, token
from .telemetry import get_logger
from .wire import Query, Wire, encode

__all__ = ["ParkedQuery", "ParkingLot"]

log = get_logger("homeskillet.parking")


class ParkedQuery(Wire, tag="parked", kw_only=True):
    query: Query
    reply: str = ""  # the caller's NATS reply subject; "" when it came over HTTP or MCP
    owner: str  # the orchestrator instance that parked it
    parked_at_ms: int


_parked = msgspec.json.Decoder(ParkedQuery)
Resume = Callable[[ParkedQuery], Coroutine[Any, Any, None]]


class ParkingLot:
    def __init__(self, nc: NATS, subjects: Subjects, instance: str, *, claim_ttl_s: float = 10.0,
                 max_age_s: float = 7 * 86400) -> None:
        self.nc, self.subjects, self.instance = nc, subjects, instance
        self.js = nc.jetstream()
        self.claim_ttl_s, self.max_age_s = claim_ttl_s, max_age_s
        self.stream = subjects.parked_stream
        self.seqs: dict[str, int] = {}  # query_id -> stream sequence, for the records this instance holds
        self._kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, resume: Resume) -> None:
        """Create the stream and claims bucket if missing; take over orphaned records now and later."""
        await self.js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.subjects.parked}.>"],
                                              storage=StorageType.FILE, max_age=self.max_age_s,
                                              duplicate_window=min(120.0, self.max_age_s)))
        self._kv = await self.js.create_key_value(KeyValueConfig(
            bucket=f"hs-parked-claims-{token(self.subjects.prefix)}", ttl=self.claim_ttl_s, history=1,
            storage=StorageType.FILE))
        self._resume = resume
        await self.sweep()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="parking-sweeper")

    async def stop(self) -> None:
        """Stop refreshing claims; records of queries not yet answered stay for another instance."""
        if self._sweeper:
            self._sweeper.cancel()
        for t in list(self._tasks):
            t.cancel()

    def _key(self, query_id: str) -> str:
        return f"q.{token(query_id)}"

    async def park(self, query: Query, reply: str) -> None:
        """Make the query durable before its fragment waits (idempotent per query)."""
        if query.query_id in self.seqs:
            return
        rec = ParkedQuery(query=query, reply=reply, owner=self.instance, parked_at_ms=int(time.time() * 1000))
        ack = await self.js.publish(f"{self.subjects.parked}.{token(query.query_id)}", encode(rec),
                                    stream=self.stream, headers={"Nats-Msg-Id": query.query_id})
        self.seqs[query.query_id] = ack.seq
        assert self._kv is not None
        await self._kv.put(self._key(query.query_id), self.instance.encode())
        log.info("query_parked", query_id=query.query_id, seq=ack.seq)

    async def done(self, query_id: str) -> None:
        """The query has its answer or error: forget the record."""
        seq = self.seqs.pop(query_id, None)
        if seq is None:
            return
        with contextlib.suppress(NotFoundError):
            await self.js.delete_msg(self.stream, seq)
        assert self._kv is not None
        with contextlib.suppress(NotFoundError):
            await self._kv.delete(self._key(query_id))

    async def sweep(self) -> int:
        """Take over every record whose claim has expired; returns how many were taken."""
        assert self._kv is not None
        taken, seq = 0, 1
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq=seq, subject=f"{self.subjects.parked}.>", next=True)
            except NotFoundError:
                return taken
            seq = (raw.seq or seq) + 1
            try:
                rec = _parked.decode(raw.data or b"")
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("parked_record_unreadable", seq=raw.seq)
                continue
            qid = rec.query.query_id
            if qid in self.seqs:
                continue  # ours, alive
            try:
                await self._kv.create(self._key(qid), self.instance.encode())
            except KeyWrongLastSequenceError:
                continue  # claimed by a live instance
            self.seqs[qid] = raw.seq or 0
            taken += 1
            log.warning("parked_query_taken_over", query_id=qid, previous_owner=rec.owner, seq=raw.seq)
            task = asyncio.create_task(self._resume(rec), name=f"resume:{qid}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _sweep_loop(self) -> None:
        assert self._kv is not None
        while True:
            await asyncio.sleep(self.claim_ttl_s / 3)
            try:
                for qid in list(self.seqs):
                    await self._kv.put(self._key(qid), self.instance.encode())  # keep our claims alive
                await self.sweep()
            except Exception as exc:  # a NATS reconnect must not end the sweeps
                log.warning("parking_sweep_failed", error=repr(exc))
