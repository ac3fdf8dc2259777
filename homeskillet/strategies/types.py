"""What every strategy works with: a fragment's served result, and the query run that strikes.

``Run`` is the orchestrator's side of the seam: strategies decide *what* to strike where, the
run does the striking (negotiation, hold → strike → settle → verdict, fallback, hedging).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from ..covenant import Step
from ..streaming import PartStream
from ..wire import Covenant, Fragment, FragmentOutcome, Offer, Query

__all__ = ["Run", "Served"]


class Served(msgspec.Struct, kw_only=True):
    """A fragment's result: the outcome whose text answers it, and every other strike made for
    it (hedge losers, escalated cascade tiers, ensemble members, map fragments), all charged."""

    outcome: FragmentOutcome
    text: str
    others: list[FragmentOutcome] = []

    def all(self) -> list[FragmentOutcome]:
        return [*self.others, self.outcome]


class Run(Protocol):
    query: Query
    cov: Covenant

    async def serve(self, frag: Fragment, stream: PartStream | None = None) -> Served:
        """Serve along the covenant's whole fallback chain (raises when nothing can); ``stream``
        gets the text as the strike produces it."""
        ...

    async def serve_on(self, frag: Fragment, step: Step) -> Served | None:
        """Serve on one step only; None when no pool of the step could."""
        ...

    async def serve_as(self, frag: Fragment, cov: Covenant, step: Step) -> Served | None:
        """Serve on one step under another covenant (a student's model); None when no pool could."""
        ...

    def offers(self) -> list[Offer]:
        """The pools quoting now."""
        ...
