"""Capture into HS_DISTILL on a real nats-server: idempotent per fragment, per tenant and student."""

from __future__ import annotations

import uuid

import nats

from homeskillet.distill.capture import PairStore, pair_id
from homeskillet.subjects import Subjects
from homeskillet.wire import DistillPair


def pair(tenant: str, student: str, fragment_hash: str, teacher: str, at: float) -> DistillPair:
    return DistillPair(pair_id=pair_id(tenant, student, fragment_hash), tenant=tenant, covenant="triage",
                       student=student, query_id="q", fragment_hash=fragment_hash, prompt=f"ticket {fragment_hash}",
                       teacher_model="claude", teacher_pool="openrouter/claude", teacher_text=teacher,
                       teacher_confidence=0.95, captured_at=at)


async def test_capture_replaces_the_same_fragment_and_keeps_tenants_apart(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        store = PairStore(nc, Subjects(f"t{uuid.uuid4().hex[:8]}"))
        await store.start()
        await store.start()  # idempotent: a second orchestrator opens the same stream
        for i in range(5):
            await store.put(pair("acme", "triage-s", f"h{i}", "billing", at=100.0 + i))
        await store.put(pair("acme", "triage-s", "h2", "refund", at=200.0))  # the same fragment, captured again
        await store.put(pair("beta", "triage-s", "h0", "outage", at=150.0))
        got = await store.pairs("acme", "triage-s")
        assert [p.fragment_hash for p in got] == ["h0", "h1", "h3", "h4", "h2"]
        assert got[-1].teacher_text == "refund"
        assert await store.count("acme", "triage-s") == 5
        assert [p.teacher_text for p in await store.pairs("beta", "triage-s")] == ["outage"]
        assert await store.pairs("gamma", "triage-s") == []
        assert [p.fragment_hash for p in await store.pairs("acme", "triage-s", limit=2)] == ["h4", "h2"]
    finally:
        await nc.close()
