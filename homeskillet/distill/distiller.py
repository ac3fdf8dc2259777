"""The distiller: owns each student's state and sits in the serving path of a ``[distill]`` covenant.

Per family fragment (strategies/distill.py asks it):

- **route**: a canary or promoted student answers (``canary.routes_to_student``); else the teacher.
- **capture**: a share (``shadow_share``) of teacher answers is also struck on the student; the pair
  (teacher's answer and confidence, student's answer, agreement, both costs) goes to ``HS_DISTILL``.
  In ``async`` mode that strike runs after the answer has gone back; a failure is counted, never
  surfaced.
- **check**: a share of the student's live answers is also struck on the teacher; each comparison
  is a live verdict in the student's window, and ``canary.decide`` may promote or roll back.

State lives on the I/O loop (one writer) and in the KV bucket ``hs-distill-<prefix>`` (stage,
adapter, held-out scores), so a restarted orchestrator serves a promoted student as before. A
student is keyed by name, plus the tenant unless the covenant shares pairs across tenants (a
tenant's pairs never train another tenant's student unless it says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from ..config import DistillationSettings
from ..kvstate import open_bucket
from ..subjects import Subjects, token
from ..telemetry import DISTILL_AGREEMENT, DISTILL_PAIRS, DISTILL_SHADOWS, get_logger
from ..wire import Distill, DistillEvent, DistillPair, Fragment, encode
from .agreement import Embed, agree
from .canary import Decision, StudentState, decide, routes_to_student
from .capture import PairStore, pair_id

__all__ = ["Distiller", "adapter_name", "student_key"]

log = get_logger("homeskillet.distill")


def student_key(terms: Distill, tenant: str) -> str:
    return terms.student if terms.share_across_tenants else f"{terms.student}.{token(tenant)}"


class Distiller:
    def __init__(self, nc: NATS, subjects: Subjects, *, settings: DistillationSettings | None = None,
                 embed: Embed | None = None, replicas: int = 0, seed: int | None = None) -> None:
        self.nc, self.subjects = nc, subjects
        self.settings = settings or DistillationSettings()
        self.store = PairStore(nc, subjects, replicas=replicas)
        self.embed = embed
        self.replicas = replicas
        self.states: dict[str, StudentState] = {}
        self.shadow_failures = 0
        self.rng = random.Random(seed)
        self._kv: KeyValue | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watching: asyncio.Task[None] | None = None
        self.training: dict[str, asyncio.Task[Any]] = {}  # student key -> its training round in flight
        self.since_train: dict[str, int] = {}  # pairs captured since the student's last round (auto_train)

    async def start(self) -> None:
        await self.store.start()
        self._kv = await open_bucket(self.nc.jetstream(), f"hs-distill-{token(self.subjects.prefix)}",
                                     replicas=self.replicas)
        # Every orchestrator and `homeskillet distill promote|rollback` writes here: follow them all.
        watcher = await self._kv.watchall()
        while True:  # the current values, then None once they are all in
            entry = await watcher.updates(timeout=10.0)  # type: ignore[no-untyped-call]
            if entry is None:
                break
            self._adopt(entry.value)
        self._watching = asyncio.create_task(self._follow(watcher), name="distill-state")

    async def _follow(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is not None:
                self._adopt(entry.value)

    def _adopt(self, value: bytes | None) -> None:
        """A stage, adapter or version set elsewhere replaces ours (and its live window starts afresh)."""
        if not value:
            return
        with contextlib.suppress(msgspec.DecodeError):
            remote = msgspec.json.decode(value, type=StudentState)
            local = self.states.get(remote.student)
            if local is None or (local.stage, local.adapter, local.version) != (remote.stage, remote.adapter,
                                                                                remote.version):
                remote.window = []
                self.states[remote.student] = remote

    async def stop(self) -> None:
        """Let shadow strikes in flight finish (they are billed already) for a moment, then cancel."""
        if self._watching is not None:
            self._watching.cancel()
        for task in self.training.values():
            task.cancel()  # the job resumes from its last checkpoint next round
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
            for t in pending:
                t.cancel()

    # --- the covenant's terms, with the deployment's settings laid on them ---

    def terms(self, terms: Distill | None) -> Distill | None:
        s = self.settings
        if terms is None or not terms.enabled or not s.enabled:
            return None
        over: dict[str, Any] = {}
        if s.mode:
            over["mode"] = s.mode
        for field, value in (("confidence_threshold", s.confidence_threshold),
                             ("max_examples", s.max_training_examples), ("auto_train", s.auto_train),
                             ("training_frequency", s.training_frequency)):
            if value is not None:
                over[field] = value
        return msgspec.structs.replace(terms, **over) if over else terms

    def state(self, key: str, tenant: str = "") -> StudentState:
        if key not in self.states:
            self.states[key] = StudentState(student=key, tenant=tenant)
        return self.states[key]

    # --- the serving path ---

    def to_student(self, terms: Distill, tenant: str) -> bool:
        state = self.state(student_key(terms, tenant), "" if terms.share_across_tenants else tenant)
        return routes_to_student(state, terms, self.rng.random())

    def sample(self, share: float) -> bool:
        return share >= 1.0 or self.rng.random() < share

    def student_model(self, terms: Distill, tenant: str) -> str:
        """The model name a student strike carries: the base, or ``<base>+<adapter>`` once trained."""
        state = self.state(student_key(terms, tenant))
        return f"{terms.base_model}+{state.adapter}" if state.adapter else terms.base_model

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def shadow_failed(self, terms: Distill, tenant: str, side: str, why: str) -> None:
        self.shadow_failures += 1
        DISTILL_SHADOWS.labels(student=student_key(terms, tenant), side=side, result="failed").inc()
        log.info("distill_shadow_failed", student=student_key(terms, tenant), side=side, error=why)

    async def capture(self, *, terms: Distill, tenant: str, covenant: str, query_id: str, frag: Fragment,
                      teacher_text: str, teacher_model: str, teacher_pool: str, teacher_confidence: float | None,
                      teacher_cost: float, student_text: str | None, student_model: str = "",
                      student_pool: str = "", student_cost: float = 0.0) -> DistillPair:
        """Keep one pair (replacing an earlier capture of the same fragment)."""
        key = student_key(terms, tenant)
        agreement = agreed = None
        if student_text is not None:
            a = agree(student_text, teacher_text, measure=terms.agreement, threshold=terms.semantic_threshold,
                      embed=self.embed if terms.agreement == "semantic" else None)
            agreement, agreed = a.score, a.agreed
            DISTILL_SHADOWS.labels(student=key, side="student", result="ok").inc()
        pair = DistillPair(
            pair_id=pair_id(tenant, terms.student, frag.hash), tenant=tenant, covenant=covenant, student=terms.student,
            query_id=query_id, fragment_hash=frag.hash, prompt=frag.prompt, context=list(frag.context),
            teacher_model=teacher_model, teacher_pool=teacher_pool, teacher_text=teacher_text,
            teacher_confidence=teacher_confidence, teacher_cost_usd=teacher_cost, student_model=student_model,
            student_pool=student_pool, student_text=student_text, student_cost_usd=student_cost, agreement=agreement,
            agreed=agreed, captured_at=time.time())
        await self.store.put(pair)
        DISTILL_PAIRS.labels(student=key).inc()
        self.since_train[key] = self.since_train.get(key, 0) + 1
        if terms.auto_train and self.since_train[key] >= terms.training_frequency:
            self.start_training(terms, tenant)
        return pair

    def start_training(self, terms: Distill, tenant: str, base_model_dir: str = "") -> asyncio.Task[Any]:
        """A training round in the background (one per student at a time); returns the round's task."""
        key = student_key(terms, tenant)
        running = self.training.get(key)
        if running is not None and not running.done():
            return running
        self.since_train[key] = 0
        task = asyncio.create_task(self._train(terms, tenant, base_model_dir), name=f"distill-train-{key}")
        self.training[key] = task
        return task

    async def _train(self, terms: Distill, tenant: str, base_model_dir: str) -> Any:
        from .paths import adapters_dir, distill_dir
        from .pipeline import run_round

        if not base_model_dir:
            from ..localmodel import resolve_model_dir

            base_model_dir = str(await asyncio.to_thread(resolve_model_dir))
        try:
            return await run_round(self, terms, tenant, work_root=distill_dir(), adapters_root=adapters_dir(),
                                   base_model_dir=base_model_dir)
        except Exception as exc:  # counted and published by run_round; the serving path never sees it
            log.warning("distill_train_failed", student=student_key(terms, tenant), error=str(exc))
            return None

    async def observe(self, terms: Distill, tenant: str, student_text: str, teacher_text: str) -> Decision:
        """One live verdict for a serving student (its answer against the teacher's on the same fragment)."""
        key = student_key(terms, tenant)
        a = agree(student_text, teacher_text, measure=terms.agreement, threshold=terms.semantic_threshold,
                  embed=self.embed if terms.agreement == "semantic" else None)
        state = self.state(key)
        state.observe(a.agreed, self.settings.live_window)
        live = state.live_agreement()
        if live is not None:
            DISTILL_AGREEMENT.labels(student=key, window="live").set(live)
        return await self.apply(key, decide(state, terms))

    async def apply(self, key: str, d: Decision) -> Decision:
        """Make a decision true: the new stage, saved, published, logged."""
        if d.action == "none":
            return d
        state = self.state(key)
        state.stage = d.stage
        if d.action in ("promote", "rollback", "start_canary"):
            state.window = []  # a new stage is judged on its own verdicts
        await self.save(state)
        await self.event(key, d.action, d.stage, d.reason)
        return d

    async def save(self, state: StudentState) -> None:
        if self._kv is not None:
            await self._kv.put(token(state.student), msgspec.json.encode(state))

    async def event(self, key: str, action: str, stage: str, reason: str = "",
                    figures: dict[str, float] | None = None) -> None:
        ev = DistillEvent(student=key, action=action, stage=stage, reason=reason, figures=figures or {}, at=time.time())
        log.info("distill_" + action, student=key, stage=stage, reason=reason, **(figures or {}))
        await self.nc.publish(self.subjects.distill_event(key, action), encode(ev))


def adapter_name(key: str) -> str:
    """A student key as an adapter name the local pools accept (letters, digits, ``._-``)."""
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in key)[:128]
