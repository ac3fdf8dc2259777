"""Negotiation: the broker (actor) owns the quote book; the negotiator runs Contract Net on NATS.

Hot path (standing quotes): pool agents publish quotes on ``hs.quote.<pool>``; the broker actor
is the book's only writer and swaps in an immutable snapshot after each change, so the loop
awards from it without a thread hop. The lease commit at the pool re-validates the quote.

Full Contract Net (covenants with ``negotiation = "cfp"``, or when the book has nothing for a
step): call for proposals on ``hs.cfp.<model>`` with a reply inbox and a bid window → bids or
refusals with reasons → award to the best (its agent answers with a Lease) and rejections to
the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .clock import now_ms
from .covenant import Step
from .errors import LeaseRejected, Unmet
from .scoring import Ranked, make_bid, rank
from .subjects import Subjects
from .supervisor import HsActor, Supervised
from .wire import (
    Award,
    Bid,
    CallForProposals,
    CancelStrike,
    Covenant,
    ErrorReply,
    Fragment,
    Lease,
    Offer,
    Quote,
    Refusal,
    Rejection,
    decode_bid_reply,
    encode,
)

__all__ = ["BookView", "BrokerActor", "BrokerState", "MarkDown", "Negotiator", "UpdateQuote", "admits",
           "bids_from_quotes"]


def admits(step: Step, offer: Offer) -> bool:
    match step.kind:
        case "class":
            return offer.pool_class == step.value
        case "provider":
            return offer.provider == step.value
        case "pool":
            return offer.pool == step.value
        case "any":
            return True
    return False


def bids_from_quotes(quotes: Iterable[Quote], step: Step, cov: Covenant, *, prompt_tokens: int, max_tokens: int,
                     exclude: Iterable[str], allow_degrade: bool, now: int) -> tuple[list[Ranked], list[Unmet]]:
    """Pure: bids made from the fresh quotes of the pools ``step`` admits, best first, and the
    terms the others could not meet. The negotiator and the virtual-time simulation both call it."""
    excluded = set(exclude)
    bids: list[Bid] = []
    unmet: list[Unmet] = []
    for q in quotes:
        if q.expires_at_ms < now or q.offer.pool in excluded or not admits(step, q.offer):
            continue
        b = make_bid(q.offer, cov, prompt_tokens=prompt_tokens, max_tokens=max_tokens, quote_seq=q.seq,
                     expires_at_ms=q.expires_at_ms, allow_degrade=allow_degrade)
        if isinstance(b, Refusal):
            unmet.append(Unmet(b.term, b.detail, b.pool))
        else:
            bids.append(b)
    return rank(bids, cov), unmet


class BookView:
    """The loop's read-only window on the quote book: one attribute, swapped whole."""

    def __init__(self) -> None:
        self.quotes: tuple[Quote, ...] = ()


class UpdateQuote(msgspec.Struct, frozen=True):
    quote: Quote


class MarkDown(msgspec.Struct, frozen=True):
    """A pool failed a strike: keep it out of awards until it quotes again."""

    pool: str
    at_ms: int


class BrokerState:
    def __init__(self, view: BookView) -> None:
        self.view = view
        self.quotes: dict[str, Quote] = {}
        self.down: dict[str, int] = {}


class BrokerActor(HsActor):
    name = "broker"

    def handle(self, msg: Any) -> Any:
        s: BrokerState = self.state
        match msg:
            case UpdateQuote(quote=q):
                old = s.quotes.get(q.offer.pool)
                if old is not None and old.issued_at_ms > q.issued_at_ms:
                    return False
                s.quotes[q.offer.pool] = q
            case MarkDown(pool=pool, at_ms=at):
                s.down[pool] = at
            case _:
                raise TypeError(f"broker cannot handle {type(msg).__name__}")
        s.view.quotes = tuple(q for p, q in s.quotes.items() if s.down.get(p, 0) < q.issued_at_ms)
        return True


class Negotiator:
    def __init__(self, nc: NATS, subjects: Subjects, broker: Supervised, view: BookView, *,
                 bid_window_ms: int = 50) -> None:
        self.nc, self.subjects, self.broker, self.view = nc, subjects, broker, view
        self.bid_window = bid_window_ms / 1000.0
        self.book_changed = asyncio.Event()  # the queue fallback step waits on this
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.quote_all, cb=self._on_quote)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_quote(self, msg: Msg) -> None:
        try:
            quote = msgspec.json.decode(msg.data, type=Quote)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        self.broker.tell(UpdateQuote(quote))
        self.book_changed.set()
        self.book_changed = asyncio.Event()

    def mark_down(self, pool: str) -> None:
        self.broker.tell(MarkDown(pool, now_ms()))

    def pools(self) -> list[Offer]:
        t = now_ms()
        return [q.offer for q in self.view.quotes if q.expires_at_ms >= t]

    def covers(self, step: Step) -> bool:
        """Whether fresh quotes exist from pools this step admits (then a CFP would add nothing)."""
        return any(admits(step, o) for o in self.pools())

    def from_quotes(self, step: Step, cov: Covenant, frag: Fragment, exclude: Iterable[str],
                    allow_degrade: bool) -> tuple[list[Ranked], list[Unmet]]:
        """Bids made from the standing quotes of the pools the step admits, best first."""
        return bids_from_quotes(self.view.quotes, step, cov, prompt_tokens=frag.prompt_tokens,
                                max_tokens=frag.max_tokens, exclude=exclude, allow_degrade=allow_degrade,
                                now=now_ms())

    async def contract_net(self, step: Step, cov: Covenant, frag: Fragment, exclude: Iterable[str],
                           allow_degrade: bool) -> tuple[list[Ranked], list[Unmet], str]:
        """One call for proposals; returns the ranked bids of pools the step admits, and the cfp id."""
        cfp_id = uuid.uuid4().hex
        window_end = time.monotonic() + self.bid_window
        cfp = CallForProposals(cfp_id=cfp_id, query_id=frag.query_id, covenant=cov, model=frag.model,
                               prompt_tokens=frag.prompt_tokens, max_tokens=frag.max_tokens,
                               reply_by_ms=now_ms() + int(self.bid_window * 1000))
        expected = len({o.pool for o in self.pools()})
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        replies: list[Bid | Refusal] = []
        try:
            await self.nc.publish(self.subjects.cfp(frag.model), encode(cfp), reply=inbox)
            while not expected or len(replies) < expected:
                left = window_end - time.monotonic()
                if left <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=left)
                except TimeoutError:
                    break
                try:
                    replies.append(decode_bid_reply(msg.data))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
        finally:
            await sub.unsubscribe()
        excluded = set(exclude)
        known = {o.pool: o for o in self.pools()}
        bids, unmet = [], []
        for r in replies:
            if r.pool in excluded or (r.pool in known and not admits(step, known[r.pool])):
                continue
            if isinstance(r, Refusal):
                unmet.append(Unmet(r.term, r.detail, r.pool))
            elif admits(step, r.offer) and (allow_degrade or r.model == cov.resources.model):
                bids.append(r)
        return rank(bids, cov), unmet, cfp_id

    async def award(self, cfp_id: str, winner: Ranked, losers: Iterable[Ranked], query_id: str,
                    strike_id: str) -> Lease:
        """Tell the winner (its agent answers with a Lease) and the losers."""
        for r in losers:
            await self.nc.publish(self.subjects.agent(r.bid.pool),
                                  encode(Rejection(cfp_id=cfp_id, pool=r.bid.pool, reason="another bid won")))
        award = Award(cfp_id=cfp_id, bid=winner.bid, query_id=query_id, strike_id=strike_id)
        try:
            msg = await self.nc.request(self.subjects.agent(winner.bid.pool), encode(award), timeout=2.0)
        except Exception as exc:
            # It may have leased and its answer got lost: the cancel frees that lease now.
            with contextlib.suppress(Exception):
                await self.nc.publish(self.subjects.agent(winner.bid.pool), encode(CancelStrike(
                    strike_id=strike_id, pool=winner.bid.pool, reason="the award went unconfirmed")))
            raise LeaseRejected(f"{winner.bid.pool} did not confirm the award: {exc!r}") from None
        reply = msgspec.json.decode(msg.data, type=Lease | ErrorReply)
        if isinstance(reply, ErrorReply):
            raise LeaseRejected(f"{winner.bid.pool} refused the award: {reply.message}", term=reply.code)
        return reply
