"""The gateway: the one entry every ingress (NATS, HTTP, MCP) calls.

Adapters decode, call ``Gateway.ask`` (or ``quote``, ``reserve`` …), encode. Validation happens
here, before any state changes, so bad input gets a clear error and touches nothing. An adapter
that knows who is calling passes the ``Principal`` (``Authenticator.identify``): a query naming
another tenant is refused (403), so a tenant cannot act as another. Rate limits are checked here;
budget holds sit on the strike path (``Orchestrator.execute``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Protocol

import msgspec
import structlog

from .auth import Principal
from .bounded import BoundedDict
from .covenant import CovenantBook
from .distill.service import DistillService
from .errors import BadRequest, HomeskilletError, NotFound, PayloadTooLarge
from .ids import new_id
from .ledger import LedgerReport, Report
from .limits import RateLimiter
from .money import round_answer, round_metrics, round_quote, round_reservation, round_usage
from .offload import off_loop, query_chars
from .orchestrator import Orchestrator
from .providers.base import AllocationMetrics
from .quoting import quote_query
from .reservations import Reservations
from .sims.base import count_tokens
from .streaming import TextSink
from .telemetry import QUERIES, QUERY_SECONDS, TTFT_SECONDS, get_logger, labelled
from .wire import (
    Answer,
    Covenant,
    ErrorReply,
    Offer,
    Query,
    QuoteReply,
    Readiness,
    Reservation,
    ReservationList,
    ReserveRequest,
    TenantUsage,
)

__all__ = ["Gateway", "PortOpener", "admit_query", "error_reply", "validate_query"]

log = get_logger("homeskillet.gateway")


def _short_id(value: str, name: str) -> None:
    # ids travel in NATS subjects, headers and KV keys: short, one printable token
    if len(value) > 128 or not value.isprintable() or any(c.isspace() for c in value):
        raise BadRequest(f"'{name}' must be at most 128 printable characters without spaces", term=name)


def validate_query(q: Query, *, max_prompt_bytes: int) -> None:
    """Raise BadRequest naming what is wrong; a valid query passes through untouched. The covenant
    terms (overrides, ``max_tokens`` against the pools' windows) are checked by ``CovenantBook.check``."""
    if q.prompt is None and not q.messages:
        raise BadRequest("the query has neither 'prompt' nor 'messages'; send one of them", term="prompt")
    if q.prompt is not None and q.messages:
        raise BadRequest("send either 'prompt' or 'messages', not both", term="prompt")
    texts = [q.prompt] if q.prompt is not None else [m.content for m in q.messages or []]
    if q.messages is not None and not any(m.role == "user" for m in q.messages):
        raise BadRequest("'messages' needs at least one message with role 'user'", term="messages")
    if q.prompt is not None and not q.prompt.strip():
        raise BadRequest("the prompt is empty", term="prompt")
    if q.messages and not any(m.content.strip() for m in q.messages if m.role == "user"):
        raise BadRequest("the user message is empty", term="messages")
    size = sum(len(t.encode()) for t in texts)
    if size > max_prompt_bytes:
        raise PayloadTooLarge(f"the prompt is {size} bytes; the limit is {max_prompt_bytes} bytes", term="prompt")
    if not q.tenant or len(q.tenant) > 128 or not q.tenant.isprintable():
        raise BadRequest("'tenant' must be 1..128 printable characters", term="tenant")
    if not 0 <= q.v < 1 << 31:
        raise BadRequest(f"'v' (the wire version) {q.v} is out of range", term="v")
    _short_id(q.query_id, "query_id")
    _short_id(q.trace_id, "trace_id")
    if not 0.0 <= q.temperature <= 2.0:
        raise BadRequest(f"'temperature' {q.temperature} is outside 0..2", term="temperature")
    if q.max_tokens is not None and not 1 <= q.max_tokens <= 32768:
        raise BadRequest(f"'max_tokens' {q.max_tokens} is outside 1..32768", term="max_tokens")


def admit_query(q: Query, book: CovenantBook, offers: Iterable[Offer], *, max_prompt_bytes: int) -> Covenant:
    """Everything checked before a query may change any state (rate limits, holds, parking): its
    fields, then its covenant (overrides, ranges, ``max_tokens`` within the pools' windows). Pure:
    the decode+validate layer every ingress shares, and what the fuzz harness drives."""
    validate_query(q, max_prompt_bytes=max_prompt_bytes)
    return book.check(q, offers)


def error_reply(exc: HomeskilletError, query_id: str = "") -> ErrorReply:
    return ErrorReply(code=exc.code, message=exc.message, status=exc.status, query_id=query_id, term=exc.term,
                      tried=list(exc.tried), retryable=exc.retryable)


def _prompt_tokens(q: Query) -> int:
    return count_tokens(q.prompt) if q.prompt is not None else sum(count_tokens(m.content) for m in q.messages or [])


class PortOpener(Protocol):
    """Serves a reservation on a dedicated local port (``ingress/reservation_port.py``)."""

    async def open(self, res: Reservation) -> int: ...

    async def close(self, reservation_id: str) -> None: ...


class Gateway:
    def __init__(self, orchestrator: Orchestrator, reservations: Reservations, *,
                 max_prompt_bytes: int = 1 << 20, limits: RateLimiter | None = None,
                 max_results: int = 10_000) -> None:
        self.orchestrator = orchestrator
        self.reservations = reservations
        self.max_prompt_bytes = max_prompt_bytes
        self.limits = limits
        self.max_results = max_results
        # recent answers, for GET /api/v1/results/{id} ([retention] results)
        self.results: BoundedDict[str, Answer] = BoundedDict(max_results, "results")
        self.ports: PortOpener | None = None  # dedicated local ports for reservations (set with the HTTP API)
        d = orchestrator.distiller
        self.distill = DistillService(d, orchestrator.covenants) if d is not None else None  # None: off

    def _admit(self, query: Query, principal: Principal | None) -> None:
        if principal is not None:  # the one identity rule (auth.py): a tenant named in the query must be the caller's
            query.tenant = principal.check_named((("tenant", query.tenant),)).tenant
        admit_query(query, self.orchestrator.covenants, self.orchestrator.negotiator.pools(),
                    max_prompt_bytes=self.max_prompt_bytes)
        if not query.query_id:
            query.query_id = new_id()

    # --- reservations: the tenant is always the caller's; another tenant's id is NotFound --------

    async def reserve(self, req: ReserveRequest) -> Reservation:
        if req.local_port and self.ports is None:
            raise BadRequest("'local_port' needs the HTTP API on (homeskillet up --http HOST:PORT)", term="local_port")
        res = await self.reservations.reserve(req)
        if req.local_port and self.ports is not None:
            try:
                port = await self.ports.open(res)
            except HomeskilletError:
                await self.reservations.release(res.reservation_id, res.tenant)  # nothing half-made is kept
                raise
            res = self.reservations.set_port(res.reservation_id, port)
        return res

    async def reservation(self, reservation_id: str, tenant: str) -> Reservation:
        return round_reservation(self.reservations.get(reservation_id, tenant))

    async def allocations(self, tenant: str, status: str | None = None) -> ReservationList:
        """The tenant's own reservations, newest first (``GET /api/v1/allocations``)."""
        return ReservationList(tenant=tenant, reservations=[round_reservation(r)
                                                            for r in self.reservations.of(tenant, status)])

    async def release(self, reservation_id: str, tenant: str) -> Reservation:
        res = await self.reservations.release(reservation_id, tenant)
        if self.ports is not None:
            await self.ports.close(reservation_id)
        return round_reservation(res)

    async def reservation_metrics(self, reservation_id: str, tenant: str) -> AllocationMetrics:
        return round_metrics(await self.reservations.metrics(reservation_id, tenant))

    async def infer_on(self, reservation_id: str, tenant: str, query: Query,
                       stream: TextSink | None = None) -> Answer:
        """Run ``query`` on one of the tenant's active reservations (``stream`` gets its text whole,
        at the end: a reservation's strikes do not stream yet)."""
        res = self.reservations.get(reservation_id, tenant)
        if res.status != "active":
            raise BadRequest(f"reservation {reservation_id!r} is {res.status}; reserve again", term="reservation_id")
        query.tenant = tenant
        validate_query(query, max_prompt_bytes=self.max_prompt_bytes)
        named = query.model or query.covenant or not res.model  # as Orchestrator.serve_on picks the covenant
        self.orchestrator.covenants.check(query if named else msgspec.structs.replace(query, model=res.model), [])
        if not query.query_id:
            query.query_id = new_id()
        if self.limits is not None:
            await self.limits.admit(tenant, await off_loop(query_chars(query), _prompt_tokens, query))
        answer = await self.orchestrator.serve_on(query, res)
        if self.limits is not None:
            await self.limits.spend(tenant, sum(f.completion_tokens for f in answer.fragments))
        if stream is not None and answer.text:
            stream(answer.text)
        self._keep(answer)
        return answer

    async def ask(self, query: Query, principal: Principal | None = None, reply: str = "",
                  stream: TextSink | None = None) -> Answer:
        """Serve a query; ``reply`` is the caller's NATS inbox (lets a resumed parked query answer it);
        ``stream`` gets the answer's text as it is produced (``streaming.streamed`` wraps this)."""
        self._admit(query, principal)
        t0 = time.perf_counter()
        # bind + reset by token: bound_contextvars copies the whole context on entry (hot path)
        tokens = structlog.contextvars.bind_contextvars(query_id=query.query_id, tenant=query.tenant)
        try:
            try:
                if self.limits is not None:
                    await self.limits.admit(query.tenant, await off_loop(query_chars(query), _prompt_tokens, query))
                answer = await self.orchestrator.serve(query, reply, stream)
                if self.limits is not None:
                    await self.limits.spend(query.tenant, sum(f.completion_tokens for f in answer.fragments))
            except HomeskilletError as exc:
                QUERIES.labels(outcome=exc.code).inc()
                log.info("query_failed", code=exc.code, error=exc.message)
                raise
            self._keep(answer)
            labelled(QUERIES, outcome="answered").inc()
            QUERY_SECONDS.observe(time.perf_counter() - t0)
            if answer.ttft_ms is not None:
                TTFT_SECONDS.observe(answer.ttft_ms / 1000.0)
            log.debug("query_answered", cost_usd=answer.cost_usd, latency_ms=round(answer.latency_ms, 2),
                      pools=[f.pool for f in answer.fragments])
            return answer
        finally:
            structlog.contextvars.reset_contextvars(**tokens)

    async def quote(self, query: Query, principal: Principal | None = None) -> QuoteReply:
        """Negotiate without executing: per fragment, the winning bid and the ranked alternatives
        with their ``why``, and the pools that refused with the term. Nothing is held or charged."""
        self._admit(query, principal)
        return round_quote(await quote_query(self.orchestrator, query))

    def covenants(self) -> list[Covenant]:
        book = self.orchestrator.covenants
        return [book.get(name) for name in book.names()]

    def readiness(self) -> Readiness:
        """Ready: connected to NATS and at least one pool is quoting fresh."""
        connected = bool(self.orchestrator.nc.is_connected)
        pools = sorted(o.pool for o in self.orchestrator.negotiator.pools())
        reasons = ([] if connected else ["not connected to NATS"]) + ([] if pools else ["no pool is quoting"])
        return Readiness(ready=not reasons, nats_connected=connected, pools_quoting=pools, reasons=reasons)

    # --- what a tenant may read back: its own results and spend ------------------------------------

    def result(self, query_id: str, tenant: str) -> Answer:
        """A recent answer of this process (the last ``max_results``); another tenant's is NotFound."""
        answer = self.results.get(query_id)
        if answer is None or answer.tenant != tenant:
            raise NotFound(f"no result {query_id!r} for this tenant (results are kept for the last "
                           f"{self.max_results} queries of this process)", term="query_id")
        return answer

    def _keep(self, answer: Answer) -> None:
        round_answer(answer)  # reported USD to the nano-dollar (money.py), in the reply and in results
        self.results[answer.query_id] = answer

    async def usage(self, tenant: str) -> TenantUsage:
        budgets = self.orchestrator.budgets
        status = await budgets.status(tenant) if budgets is not None and budgets.applies(tenant) else None
        report: LedgerReport = await self.orchestrator.ledger.call(Report(tenant))
        return round_usage(TenantUsage(tenant=tenant, budget=status,
                                       process_spent_usd=report.spent_usd.get(tenant, 0.0),
                                       process_held_usd=report.held_usd.get(tenant, 0.0)))
