"""NATS subject names in one place. A prefix other than ``hs`` namespaces a whole deployment
(tests use one per test so nothing crosses between them on a shared server)."""

from __future__ import annotations

import re

__all__ = ["Subjects", "token"]

_UNSAFE = re.compile(r"[.\s*>]")


def token(name: str) -> str:
    """A pool or model name as one subject token (dots and wildcards would split or match)."""
    return _UNSAFE.sub("_", name)


class Subjects:
    def __init__(self, prefix: str = "hs") -> None:
        self.prefix = prefix
        self.query = f"{prefix}.query"
        self.cfp_all = f"{prefix}.cfp.>"
        self.quote_all = f"{prefix}.quote.>"
        self.verdict_all = f"{prefix}.events.verdict.>"
        self.events_all = f"{prefix}.events.>"
        self.inbox = f"_INBOX.{prefix}"
        self.parked_stream = "HS_PARKED" if prefix == "hs" else f"HS_PARKED_{token(prefix).upper()}"
        self.parked = f"{prefix}.parked"
        self.reservation_all = f"{prefix}.reservation.*"
        self.distill_stream = "HS_DISTILL" if prefix == "hs" else f"HS_DISTILL_{token(prefix).upper()}"
        self.distill_pairs = f"{prefix}.distill.pairs"

    def cfp(self, model: str) -> str:
        return f"{self.prefix}.cfp.{token(model)}"

    def quote(self, pool: str) -> str:
        return f"{self.prefix}.quote.{token(pool)}"

    def strike(self, pool: str) -> str:
        return f"{self.prefix}.strike.{token(pool)}"

    def agent(self, pool: str) -> str:
        return f"{self.prefix}.agent.{token(pool)}"

    def reservation(self, reservation_id: str) -> str:
        return f"{self.prefix}.reservation.{token(reservation_id)}"

    def verdict(self, pool: str) -> str:
        return f"{self.prefix}.events.verdict.{token(pool)}"

    def distill_pair(self, tenant: str, student: str, pair_id: str) -> str:
        """One subject per pair: the stream keeps one message per subject, so a re-capture replaces."""
        return f"{self.distill_pairs}.{token(tenant)}.{token(student)}.{token(pair_id)}"

    def distill_event(self, student: str, action: str) -> str:
        return f"{self.prefix}.events.distill.{token(student)}.{token(action)}"
