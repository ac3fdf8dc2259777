"""Capture: teacher/student pairs into the ``HS_DISTILL`` JetStream stream, and back out.

One subject per pair (``<prefix>.distill.pairs.<tenant>.<student>.<pair_id>``) and one message kept
per subject, so capturing the same fragment again replaces its pair instead of adding one: capture
is idempotent per fragment, whoever captures it, and survives any orchestrator (the stream is on
the NATS servers, replicated like every other stream). Reading is per (tenant, student), newest
``max_examples`` first; a student trained for many tenants reads each tenant that consented.
"""

from __future__ import annotations

import hashlib
import time

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from ..kvstate import ensure_stream
from ..subjects import Subjects, token
from ..wire import DistillPair, encode

__all__ = ["PairStore", "pair_id"]

_pair = msgspec.json.Decoder(DistillPair)


def pair_id(tenant: str, student: str, fragment_hash: str) -> str:
    return hashlib.sha256(f"{tenant}\0{student}\0{fragment_hash}".encode()).hexdigest()[:32]


class PairStore:
    def __init__(self, nc: NATS, subjects: Subjects, *, replicas: int = 0, max_pairs: int = 1_000_000) -> None:
        self.nc, self.subjects = nc, subjects
        self.js = nc.jetstream()
        self.replicas, self.max_pairs = replicas, max_pairs
        self.stream = subjects.distill_stream

    async def start(self) -> None:
        """Create the stream if missing (one message per pair subject; the oldest pairs leave first)."""
        await ensure_stream(self.js, StreamConfig(
            name=self.stream, subjects=[f"{self.subjects.distill_pairs}.>"], storage=StorageType.FILE,
            max_msgs_per_subject=1, max_msgs=self.max_pairs, discard=DiscardPolicy.OLD), replicas=self.replicas)

    async def put(self, pair: DistillPair) -> None:
        if not pair.captured_at:
            pair = msgspec.structs.replace(pair, captured_at=time.time())
        await self.js.publish(self.subjects.distill_pair(pair.tenant, pair.student, pair.pair_id), encode(pair),
                              stream=self.stream)

    async def pairs(self, tenant: str, student: str, *, limit: int = 10_000) -> list[DistillPair]:
        """The newest ``limit`` pairs of one tenant (``*``: every tenant) for one student, oldest first."""
        subject = self._filter(tenant, student)
        try:
            info = await self.js.stream_info(self.stream, subjects_filter=subject)
        except NotFoundError:
            return []
        total = len(info.state.subjects or {}) if info.state.subjects is not None else info.state.messages
        if total == 0:
            return []
        sub = await self.js.pull_subscribe(subject, stream=self.stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, inactive_threshold=30.0, mem_storage=True))
        out: list[DistillPair] = []
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                msgs = await sub.fetch(min(pending, 256), timeout=5.0)
                for m in msgs:
                    out.append(_pair.decode(m.data))
                    await m.ack()
                pending -= len(msgs)
        finally:
            await sub.unsubscribe()
        out.sort(key=lambda p: p.captured_at)
        return out[-limit:]

    def _filter(self, tenant: str, student: str) -> str:
        """Every pair of one tenant (``*``: of every tenant) for one student."""
        return f"{self.subjects.distill_pairs}.{'*' if tenant == '*' else token(tenant)}.{token(student)}.>"

    async def count(self, tenant: str, student: str) -> int:
        subject = self._filter(tenant, student)
        try:
            info = await self.js.stream_info(self.stream, subjects_filter=subject)
        except NotFoundError:
            return 0
        return len(info.state.subjects or {})
