"""The gateway: the one entry every ingress (NATS, HTTP, MCP) calls.

Adapters decode, call ``Gateway.ask``, encode. Validation happens here, before any state
changes, so bad input gets a clear error and touches nothing.
"""

from __future__ import annotations

import time

import structlog

from .errors import BadRequest, HomeskilletError, PayloadTooLarge
from .ids import new_id
from .orchestrator import Orchestrator
from .providers.base import AllocationMetrics
from .reservations import Reservations
from .telemetry import QUERIES, QUERY_SECONDS, get_logger
from .wire import Answer, ErrorReply, Query, Reservation, ReserveRequest

__all__ = ["Gateway", "error_reply", "validate_query"]

log = get_logger("homeskillet.gateway")


def validate_query(q: Query, *, max_prompt_bytes: int) -> None:
    """Raise BadRequest naming what is wrong; a valid query passes through untouched."""
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
    if not q.tenant or len(q.tenant) > 128:
        raise BadRequest("'tenant' must be 1..128 characters", term="tenant")
    if not 0.0 <= q.temperature <= 2.0:
        raise BadRequest(f"'temperature' {q.temperature} is outside 0..2", term="temperature")
    if q.max_tokens is not None and not 1 <= q.max_tokens <= 32768:
        raise BadRequest(f"'max_tokens' {q.max_tokens} is outside 1..32768", term="max_tokens")


def error_reply(exc: HomeskilletError, query_id: str = "") -> ErrorReply:
    return ErrorReply(code=exc.code, message=exc.message, status=exc.status, query_id=query_id, term=exc.term,
                      tried=list(exc.tried), retryable=exc.retryable)


class Gateway:
    def __init__(self, orchestrator: Orchestrator, reservations: Reservations, *,
                 max_prompt_bytes: int = 1 << 20) -> None:
        self.orchestrator = orchestrator
        self.reservations = reservations
        self.max_prompt_bytes = max_prompt_bytes

    # --- reservations: the tenant is always the caller's; another tenant's id is NotFound --------

    async def reserve(self, req: ReserveRequest) -> Reservation:
        return await self.reservations.reserve(req)

    async def reservation(self, reservation_id: str, tenant: str) -> Reservation:
        return self.reservations.get(reservation_id, tenant)

    async def release(self, reservation_id: str, tenant: str) -> Reservation:
        return await self.reservations.release(reservation_id, tenant)

    async def reservation_metrics(self, reservation_id: str, tenant: str) -> AllocationMetrics:
        return await self.reservations.metrics(reservation_id, tenant)

    async def infer_on(self, reservation_id: str, tenant: str, query: Query) -> Answer:
        """Run ``query`` on one of the tenant's active reservations."""
        res = self.reservations.get(reservation_id, tenant)
        if res.status != "active":
            raise BadRequest(f"reservation {reservation_id!r} is {res.status}; reserve again", term="reservation_id")
        query.tenant = tenant
        validate_query(query, max_prompt_bytes=self.max_prompt_bytes)
        if not query.query_id:
            query.query_id = new_id()
        return await self.orchestrator.serve_on(query, res)

    async def ask(self, query: Query, reply: str = "") -> Answer:
        validate_query(query, max_prompt_bytes=self.max_prompt_bytes)
        if not query.query_id:
            query.query_id = new_id()
        t0 = time.perf_counter()
        # bind + reset by token: bound_contextvars copies the whole context on entry (hot path)
        tokens = structlog.contextvars.bind_contextvars(query_id=query.query_id, tenant=query.tenant)
        try:
            try:
                answer = await self.orchestrator.serve(query, reply)
            except HomeskilletError as exc:
                QUERIES.labels(outcome=exc.code).inc()
                log.info("query_failed", code=exc.code, error=exc.message)
                raise
            QUERIES.labels(outcome="answered").inc()
            QUERY_SECONDS.observe(time.perf_counter() - t0)
            log.debug("query_answered", cost_usd=answer.cost_usd, latency_ms=round(answer.latency_ms, 2),
                      pools=[f.pool for f in answer.fragments])
            return answer
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
