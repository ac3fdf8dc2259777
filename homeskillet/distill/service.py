"""What every ingress asks of distillation, for one tenant: status, a training round, the export.

HTTP (``ingress/distill_api.py``), MCP (``distill_status``, ``distill_train``) and the CLI call these,
so the tenant rule and the checks live here once.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..covenant import CovenantBook
from ..errors import BadRequest, NotFound
from ..wire import Covenant, DistillPair
from .canary import StudentState
from .dataset import trainable
from .distiller import Distiller, student_key

__all__ = ["DistillService", "DistillStatus", "TrainStarted"]


class DistillStatus(msgspec.Struct, kw_only=True):
    students: list[StudentState]
    shadow_failures: int


class TrainStarted(msgspec.Struct, kw_only=True):
    student: str
    status: str  # "training"
    events: str  # the subject its progress and outcome are published on


class DistillService:
    def __init__(self, distiller: Distiller, covenants: CovenantBook) -> None:
        self.distiller, self.covenants = distiller, covenants

    def family(self, covenant: str | None, student: str | None) -> Covenant:
        """The [distill] covenant named, or the one whose student is ``student``."""
        for cov in self.covenants.all():
            if cov.distill is None:
                continue
            if (covenant and cov.name == covenant) or (not covenant and cov.distill.student == student):
                return cov
        names = ", ".join(c.name for c in self.covenants.all() if c.distill) or "none"
        raise NotFound(f"no covenant with a [distill] table matches covenant={covenant!r} student_model={student!r}; "
                       f"distilled covenants: {names}", term="covenant" if covenant else "student_model")

    def status(self, tenant: str) -> DistillStatus:
        d = self.distiller
        return DistillStatus(students=[s for s in d.states.values() if s.tenant in (tenant, "")],
                             shadow_failures=d.shadow_failures)

    def train(self, tenant: str, *, covenant: str | None = None, student: str | None = None,
              num_examples: int | None = None, validation_split: float | None = None) -> TrainStarted:
        cov = self.family(covenant, student)
        terms = self.distiller.terms(cov.distill)
        if terms is None:
            raise BadRequest(f"covenant {cov.name!r}: its [distill] table is disabled", term="distill.enabled")
        over: dict[str, Any] = {}
        if num_examples is not None:
            if not 1 <= num_examples <= 1_000_000:
                raise BadRequest(f"num_examples {num_examples} is outside 1..1000000", term="num_examples")
            over["max_examples"] = num_examples
        if validation_split is not None:
            if not 0.0 <= validation_split < 1.0:
                raise BadRequest(f"validation_split {validation_split} is outside [0, 1)", term="validation_split")
            over["validation_split"] = validation_split
        terms = msgspec.structs.replace(terms, **over)
        self.distiller.start_training(terms, tenant)
        key = student_key(terms, tenant)
        return TrainStarted(student=key, status="training",
                            events=f"{self.distiller.subjects.prefix}.events.distill.{key}.*")

    async def export(self, tenant: str, student: str, confidence_threshold: float = 0.0) -> list[DistillPair]:
        if not student:
            raise BadRequest("name the student", term="student")
        if not 0.0 <= confidence_threshold <= 1.0:
            raise BadRequest(f"confidence_threshold {confidence_threshold} is outside 0..1",
                             term="confidence_threshold")
        return trainable(await self.distiller.store.pairs(tenant, student), confidence_threshold)
