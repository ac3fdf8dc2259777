"""Distillation in the serving path, on a real nats-server: capture beside the teacher, canary,
promotion and rollback decided from live verdicts, each decision an event."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from homeskillet.covenant import default_covenant_dir
from homeskillet.distill.canary import StudentState
from homeskillet.distill.distiller import student_key
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import DistillEvent, Query

TRIAGE = """
max_tokens = 16
[resources]
model = "teacher-xl"
pool_class = "premium"
[qos]
latency_target_ms = 5000
hard_deadline_ms = 20000
[fallback]
steps = ["fail"]
[distill]
student = "triage-s"
mode = "{mode}"
confidence_threshold = 0.5
canary_share = 1.0
canary_min_samples = 4
check_share = 1.0
"""


def covenants(tmp: Path, mode: str = "async") -> str:
    d = tmp / "covenants"
    shutil.copytree(default_covenant_dir(), d)
    (d / "triage.toml").write_text(TRIAGE.replace("{mode}", mode))
    return str(d)


def pools(student_quality: float = 1.0) -> list[Any]:
    return [echo_pool("echo/teacher", "premium", models=["teacher-xl"], options={"logprobs": True}),
            echo_pool("echo/student", "local", models=["smollm2-135m", "smollm2-135m+*"], usd_per_mtok_in=0.0,
                      usd_per_mtok_out=0.0, options={"quality": student_quality, "seed": 3})]


async def until(cond: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await cond():
            await asyncio.sleep(0.05)


async def ask(rt: Runtime, prompt: str, tenant: str = "acme") -> Any:
    assert rt.gateway is not None
    return await rt.gateway.ask(Query(prompt=prompt, covenant="triage", tenant=tenant))


async def test_async_capture_is_off_the_answer_and_idempotent(nats_url: str, tmp_path: Path) -> None:
    async with start_runtime(nats_url, pools(), covenants_dir=covenants(tmp_path)) as rt:
        d = rt.distiller
        assert d is not None
        for i in range(4):
            answer = await ask(rt, f"My invoice {i} is wrong")
            assert [f.pool for f in answer.fragments] == ["echo/teacher"]  # the shadow is not in the answer
        await ask(rt, "My invoice 0 is wrong")  # the same fragment again: its pair is replaced, not added

        async def five_strikes_captured() -> bool:
            return await d.store.count("acme", "triage-s") == 4 and not d._tasks

        await until(five_strikes_captured)
        pairs = await d.store.pairs("acme", "triage-s")
        assert {p.student_pool for p in pairs} == {"echo/student"} and all(p.agreed for p in pairs)
        assert all(p.teacher_confidence is not None for p in pairs)
        assert await d.store.count("beta", "triage-s") == 0  # another tenant's pairs are its own


async def test_sync_mode_shows_the_shadow_and_a_failed_student_never_surfaces(nats_url: str, tmp_path: Path) -> None:
    async with start_runtime(nats_url, pools(), covenants_dir=covenants(tmp_path, "sync")) as rt:
        answer = await ask(rt, "Refund my order please")
        shadow = [f for f in answer.fragments if f.role == "shadow"]
        assert len(shadow) == 1 and not shadow[0].contributed and shadow[0].pool == "echo/student"
        assert answer.text.startswith("echo:")
    teacher_only = [echo_pool("echo/teacher", "premium", models=["teacher-xl"], options={"logprobs": True})]
    async with start_runtime(nats_url, teacher_only, covenants_dir=covenants(tmp_path / "b", "sync")) as rt:
        answer = await ask(rt, "Refund my order please")  # no student pool at all: the teacher still answers
        assert [f.pool for f in answer.fragments] == ["echo/teacher"]
        assert rt.distiller is not None and rt.distiller.shadow_failures == 1
        pairs = await rt.distiller.store.pairs("acme", "triage-s")
        assert len(pairs) == 1 and pairs[0].student_text is None


@pytest.mark.parametrize(("quality", "action", "stage"),
                         [(1.0, "promote", "promoted"), (0.0, "rollback", "rolled_back")])
async def test_canary_is_promoted_or_rolled_back_by_live_verdicts(nats_url: str, tmp_path: Path, quality: float,
                                                                  action: str, stage: str) -> None:
    async with start_runtime(nats_url, pools(quality), covenants_dir=covenants(tmp_path)) as rt:
        d = rt.distiller
        assert d is not None and rt.nc is not None
        events: list[DistillEvent] = []

        async def seen(m: Any) -> None:
            events.append(msgspec.json.decode(m.data, type=DistillEvent))

        sub = await rt.nc.subscribe(f"{rt.subjects.prefix}.events.distill.>", cb=seen)
        key = student_key(rt.orchestrator.covenants.get("triage").distill, "acme")  # type: ignore[union-attr,arg-type]
        d.states[key] = StudentState(student=key, stage="canary", adapter="triage-s", heldout_after=0.9)
        async def decided() -> bool:
            return any(e.action == action for e in events)

        answer = await ask(rt, "Where is parcel 0?")
        assert answer.fragments[0].role == "student" and answer.fragments[0].pool == "echo/student"
        for i in range(1, 12):  # each canary answer is checked against the teacher in the background
            if await decided():
                break
            await ask(rt, f"Where is parcel {i}?")
        await until(decided)
        await sub.unsubscribe()
        assert d.states[key].stage == stage
        ev = next(e for e in events if e.action == action)
        assert ev.stage == stage and "live agreement" in ev.reason
        if stage == "rolled_back":  # the family goes back to the teacher at once
            answer = await ask(rt, "Where is parcel 99?")
            assert answer.fragments[0].pool == "echo/teacher"
        # Another orchestrator on the same deployment (or this one restarted) serves the same stage.
        settings = msgspec.structs.replace(rt.settings, pools=[])
        peer = Runtime(settings)
        await peer.start()
        try:
            assert peer.distiller is not None and peer.distiller.states[key].stage == stage
        finally:
            await peer.stop()


async def test_the_seeds_endpoints_capture_export_and_status_per_tenant(nats_url: str, tmp_path: Path) -> None:
    import httpx

    from homeskillet.config import HttpSettings

    http = HttpSettings(listen="127.0.0.1:0")
    async with start_runtime(nats_url, pools(), covenants_dir=covenants(tmp_path), http=http) as rt:
        assert rt.http is not None and rt.distiller is not None
        async with httpx.AsyncClient(base_url=rt.http.url, headers={"X-Tenant": "acme"}) as c:
            r = await c.post("/api/v1/distillation/query", json={"input": "My card was billed twice",
                                                                 "teacher_model": "teacher-xl"})
            assert r.status_code == 200 and r.json()["text"].startswith("echo:")
            r = await c.post("/api/v1/distillation/query", json={"input": "Not this one", "covenant": "triage",
                                                                 "capture_training": False})
            assert r.status_code == 200

            async def one_pair() -> bool:
                return await rt.distiller.store.count("acme", "triage-s") == 1 and not rt.distiller._tasks  # type: ignore[union-attr]

            await until(one_pair)
            r = await c.get("/api/v1/distillation/export", params={"format": "jsonl", "student": "triage-s"})
            lines = [json.loads(line) for line in r.text.splitlines()]
            assert r.status_code == 200 and len(lines) == 1
            assert lines[0]["messages"][-2:] == [{"role": "user", "content": "My card was billed twice"},
                                                 {"role": "assistant", "content": lines[0]["messages"][-1]["content"]}]
            other = await c.get("/api/v1/distillation/export", params={"student": "triage-s"},
                                headers={"X-Tenant": "beta"})
            assert other.status_code == 200 and other.text == ""  # another tenant sees none of acme's pairs
            bad = await c.post("/api/v1/distillation/query", json={"input": "x", "teacher_model": "teacher-xl",
                                                                   "nope": 1})
            assert bad.status_code == 400 and "nope" in bad.text
            bad = await c.post("/api/v1/distillation/train", json={"covenant": "triage", "validation_split": 2})
            assert bad.status_code == 400 and bad.json()["term"] == "validation_split"
            r = await c.get("/api/v1/distillation/status")
            assert [(s["student"], s["stage"]) for s in r.json()["students"]] == [("triage-s.acme", "base")]
            r = await c.get("/api/v1/distillation/status", headers={"X-Tenant": "beta"})
            assert r.status_code == 200 and r.json()["students"] == []
