"""A ``[distill]`` covenant's fragment: the teacher answers and the student shadows it, or a canary or
promoted student answers and the teacher checks a share of its answers.

The student is struck like any fragment (negotiation, hold → strike → settle → verdict), on the
covenant's ``student_step`` with the student's model (``<base>+<adapter>`` once trained) and the
covenant's cost and deadline terms, its resource minimums dropped (they describe the teacher).
Shadow strikes are billed to the tenant and counted apart; one that fails is counted and logged,
never surfaced, and never delays an ``async`` answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec

from ..covenant import parse_step
from ..distill.distiller import Distiller, student_key
from ..errors import HomeskilletError
from ..telemetry import DISTILL_SERVED, DISTILL_SHADOWS
from ..wire import Covenant, Distill, Fragment, Hedge
from .types import Run, Served

__all__ = ["distilled", "student_covenant"]


def student_covenant(cov: Covenant, model: str) -> Covenant:
    """The covenant a student strike runs under: the same cost, deadline and priority, the student's model."""
    r = msgspec.structs.replace(cov.resources, model=model, min_vram_mb=0, max_vram_mb=None, min_tflops=0.0,
                                accelerator="any", gpu_models=[], pool_class=None)
    return msgspec.structs.replace(cov, resources=r, distill=None,
                                   strategy=msgspec.structs.replace(cov.strategy, hedge=Hedge()))


async def _student(run: Run, frag: Fragment, terms: Distill, distiller: Distiller) -> Served | None:
    model = distiller.student_model(terms, run.query.tenant)
    sfrag = msgspec.structs.replace(frag, model=model, fragment_id=f"{frag.fragment_id}.student")
    return await run.serve_as(sfrag, student_covenant(run.cov, model), parse_step(terms.student_step))


async def _strike_student(run: Run, frag: Fragment, terms: Distill, distiller: Distiller) -> Served | None:
    """The student's shadow strike; a failure is counted and logged, never raised."""
    try:
        student = await _student(run, frag, terms, distiller)
    except HomeskilletError as exc:
        distiller.shadow_failed(terms, run.query.tenant, "student", exc.message)
        return None
    if student is None:
        distiller.shadow_failed(terms, run.query.tenant, "student", f"no pool of step {terms.student_step} serves it")
    return student


async def _keep(run: Run, frag: Fragment, terms: Distill, distiller: Distiller, teacher: Served,
                student: Served | None) -> None:
    """Capture the pair (the student's answer is None when its strike failed)."""
    t, s = teacher.outcome, student.outcome if student else None
    try:
        await distiller.capture(
            terms=terms, tenant=run.query.tenant, covenant=run.cov.name, query_id=run.query.query_id, frag=frag,
            teacher_text=teacher.text, teacher_model=t.model, teacher_pool=t.pool, teacher_confidence=t.confidence,
            teacher_cost=t.cost_usd, student_text=student.text if student else None,
            student_model=s.model if s else "", student_pool=s.pool if s else "", student_cost=s.cost_usd if s else 0.0)
    except Exception as exc:  # the stream is unreachable: the answer stands; the pair is lost, counted
        distiller.shadow_failed(terms, run.query.tenant, "capture", repr(exc))


async def _shadow(run: Run, frag: Fragment, terms: Distill, distiller: Distiller, teacher: Served) -> None:
    await _keep(run, frag, terms, distiller, teacher, await _strike_student(run, frag, terms, distiller))


async def _check(run: Run, frag: Fragment, terms: Distill, distiller: Distiller, student: Served) -> None:
    """Strike the teacher on a fragment the student answered: one live verdict."""
    try:
        teacher = await run.serve(frag)
    except HomeskilletError as exc:
        distiller.shadow_failed(terms, run.query.tenant, "teacher", exc.message)
        return
    DISTILL_SHADOWS.labels(student=student_key(terms, run.query.tenant), side="teacher", result="ok").inc()
    await distiller.observe(terms, run.query.tenant, student.text, teacher.text)


async def distilled(run: Run, frag: Fragment, terms: Distill, distiller: Distiller,
                    serve_teacher: Callable[[Fragment], Awaitable[Served]]) -> Served:
    tenant = run.query.tenant
    key = student_key(terms, tenant)
    if distiller.to_student(terms, tenant):
        stage = distiller.state(key).stage
        served = await _strike_student(run, frag, terms, distiller)  # a failure falls back to the teacher
        if served is not None:
            DISTILL_SERVED.labels(student=key, tier="student").inc()
            if stage == "canary" or distiller.sample(terms.check_share):
                distiller.spawn(_check(run, frag, terms, distiller, served))
            outcome = msgspec.structs.replace(served.outcome, role="student", contribution=f"answer ({stage} student)")
            return Served(outcome=outcome, text=served.text, others=served.others)
    if not distiller.sample(terms.shadow_share):
        teacher = await serve_teacher(frag)
    elif terms.mode == "sync":  # both at once; the answer waits for the pair
        teacher, student = await asyncio.gather(serve_teacher(frag), _strike_student(run, frag, terms, distiller))
        await _keep(run, frag, terms, distiller, teacher, student)
        if student is not None:
            shadow = msgspec.structs.replace(student.outcome, role="shadow", contributed=False,
                                             contribution="student shadow (captured, not in the answer)")
            teacher = Served(outcome=teacher.outcome, text=teacher.text,
                             others=[*teacher.others, *student.others, shadow])
    else:  # async: the answer goes back first
        teacher = await serve_teacher(frag)
        if not teacher.outcome.degraded:
            distiller.spawn(_shadow(run, frag, terms, distiller, teacher))
    DISTILL_SERVED.labels(student=key, tier="teacher").inc()
    return teacher
