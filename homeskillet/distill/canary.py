"""Canary, promotion and rollback of a student, as a pure state machine.

```
 base ──train──▶ trained ──held-out ≥ promote_at──▶ canary ──live ≥ promote_at──▶ promoted
                    │ below                          │ live < rollback_below         │ live < rollback_below
                    ▼                                ▼                               ▼
                 rejected                         rolled_back ◀─────────────────────┘
```

Live agreement is measured on a window of the most recent shadowed verdicts (the student's answer
compared with the teacher's on the same fragment). A decision needs enough of them: a window of
``canary_min_samples`` to promote, half of it to roll back (a slipping student should leave soon).
``decide`` never acts; the distiller applies what it returns and publishes it as an event.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import msgspec

from ..wire import Distill

__all__ = ["Arm", "Decision", "Stage", "StudentState", "decide", "routes_to_student"]

Stage = Literal["base", "trained", "rejected", "canary", "promoted", "rolled_back"]


class Arm(msgspec.Struct, kw_only=True):
    """What one side of the split served: verdicts, agreements and money."""

    served: int = 0
    agreed: int = 0
    judged: int = 0  # served fragments that also had a teacher answer to compare with
    cost_usd: float = 0.0

    def record(self, *, cost_usd: float, agreed: bool | None) -> None:
        self.served += 1
        self.cost_usd += cost_usd
        if agreed is not None:
            self.judged += 1
            self.agreed += int(agreed)


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    action: Literal["none", "start_canary", "reject", "promote", "rollback"]
    reason: str
    stage: Stage  # the stage after the action


class StudentState(msgspec.Struct, kw_only=True):
    student: str
    tenant: str = ""  # whose pairs train it ("" = every tenant that shares)
    stage: Stage = "base"
    adapter: str = ""  # the adapter name the local pools serve it as (<base>+<adapter>); "" = the base model
    version: int = 0  # adapter versions trained so far (the adapter is "<student>-v<version>")
    heldout_before: float | None = None
    heldout_after: float | None = None
    student_arm: Arm = msgspec.field(default_factory=Arm)
    teacher_arm: Arm = msgspec.field(default_factory=Arm)
    window: list[bool] = []  # recent live agreements, oldest first (bounded by the caller's window)

    def observe(self, agreed: bool, window: int) -> None:
        """One shadowed live verdict; the window keeps the most recent ``window``."""
        recent = deque(self.window, maxlen=window)
        recent.append(agreed)
        self.window = list(recent)

    def live_agreement(self) -> float | None:
        return sum(self.window) / len(self.window) if self.window else None


def decide(state: StudentState, terms: Distill) -> Decision:
    """What to do next with this student under the covenant's terms (pure)."""
    n, live = len(state.window), state.live_agreement()
    match state.stage:
        case "trained":
            after = state.heldout_after
            if after is None:
                return Decision(action="none", reason="not evaluated yet", stage="trained")
            if after >= terms.promote_at:
                return Decision(action="start_canary", stage="canary",
                                reason=f"held-out agreement {after:.1%} ≥ promote_at {terms.promote_at:.0%}")
            return Decision(action="reject", stage="rejected",
                            reason=f"held-out agreement {after:.1%} < promote_at {terms.promote_at:.0%}")
        case "canary" | "promoted" if live is not None and n >= max(1, terms.canary_min_samples // 2) \
                and live < terms.rollback_below:
            return Decision(action="rollback", stage="rolled_back",
                            reason=f"live agreement {live:.1%} over {n} verdicts < rollback_below "
                                   f"{terms.rollback_below:.0%}")
        case "canary" if live is not None and n >= terms.canary_min_samples and live >= terms.promote_at:
            return Decision(action="promote", stage="promoted",
                            reason=f"live agreement {live:.1%} over {n} verdicts ≥ promote_at {terms.promote_at:.0%}")
    return Decision(action="none", reason="holding", stage=state.stage)


def routes_to_student(state: StudentState, terms: Distill, draw: float) -> bool:
    """Does a live fragment of the family go to the student? ``draw`` is uniform in [0, 1)."""
    if state.stage == "promoted":
        return True
    return state.stage == "canary" and draw < terms.canary_share
