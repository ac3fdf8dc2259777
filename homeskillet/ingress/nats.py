"""NATS ingress: the ``homeskillet`` micro service, endpoints ``hs.query`` (Query → Answer),
``hs.quote`` (Query → QuoteReply: negotiated, not executed) and ``hs.reserve`` (ReserveRequest →
Reservation).

Discoverable through ``$SRV.PING/INFO/STATS``. Errors are service error headers
(``Nats-Service-Error``: the message on one line, cut to 512 bytes; ``Nats-Service-Error-Code`` =
the HTTP-like status) with an ErrorReply JSON body carrying the whole message and ``tried``. The
adapter only decodes, calls the gateway, encodes.

Identity: with auth on (``up --auth`` / ``JWT_ENABLED``) every request carries a bearer token in a
NATS header, ``Authorization: Bearer <JWT>``, checked by the same rule as HTTP and MCP
(``Authenticator.identify``): the tenant is the token's, never the payload's. No or a bad token is a
401 service error; a payload ``tenant`` or ``X-Tenant`` header naming another tenant, or a token
without the scope (``hs:query`` for query/quote, ``hs:reserve`` for reserve), is a 403. With auth off
the payload's tenant is trusted (development on one machine). Who may connect and publish at all
stays the NATS server's business (accounts, users, permissions).

Streaming: a query sent with the header ``Hs-Stream: 1`` gets ``AnswerChunk`` messages on its
reply subject as the answer's text is produced, then the ``Answer`` (or the error) as usual. Such a
caller subscribes to its own inbox rather than using request() (which takes the first reply);
``wire.decode_answer_stream`` tells the three apart (README, "Streaming over NATS").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from .. import __version__
from ..auth import Authenticator, AuthSettings, Principal, Scope, header
from ..errors import HomeskilletError, header_text
from ..gateway import Gateway, error_reply
from ..parking import ParkingLot
from ..streaming import streamed
from ..subjects import Subjects
from ..telemetry import get_logger
from ..wire import Answer, AnswerChunk, Query, ReserveRequest, encode
from .decoding import decode_json

__all__ = ["STREAM_HEADER", "NatsIngress", "identify", "respond"]

STREAM_HEADER = "Hs-Stream"  # "1" on an hs.query request: stream the answer's text to the reply subject

log = get_logger("homeskillet.ingress.nats")



def _headers(exc: HomeskilletError) -> dict[str, str]:
    return {"Nats-Service-Error": header_text(exc.message), "Nats-Service-Error-Code": str(exc.status)}


async def respond(nc: NATS, reply: str, outcome: Answer | HomeskilletError, query_id: str = "") -> None:
    """Send an answer, or an error with micro-service error headers, to a caller's reply subject
    (used for queries resumed from the durable queue, whose original request message is gone)."""
    if isinstance(outcome, Answer):
        await nc.publish(reply, encode(outcome))
    else:
        await nc.publish(reply, encode(error_reply(outcome, query_id)), headers=_headers(outcome))


def identify(auth: Authenticator, headers: dict[str, str] | None, tenant: str | None, scope: Scope) -> Principal:
    """The caller of a NATS request, by the rule every ingress shares (bearer token in a header)."""
    return auth.identify(header(headers, "Authorization"),
                         (("X-Tenant", header(headers, "X-Tenant")), ("tenant", tenant)), scope=scope)


class NatsIngress:
    def __init__(self, nc: NATS, subjects: Subjects, gateway: Gateway, auth: Authenticator | None = None,
                 parking: ParkingLot | None = None) -> None:
        self.nc, self.subjects, self.gateway = nc, subjects, gateway
        self.auth = auth or Authenticator(AuthSettings())
        self.parking = parking  # the record of each accepted query (parking.py): deleted once answered
        self.service: Service | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.service = await add_service(
            self.nc, name="homeskillet", version=__version__,
            description="Covenant-driven fusion and strike scheduling: send a Query, get an Answer",
            queue_group="homeskillet",
        )
        p = self.subjects.prefix
        for name, subject, handler in (("query", self.subjects.query, self._on_query),
                                       ("quote", f"{p}.quote", self._on_quote),
                                       ("reserve", f"{p}.reserve", self._on_reserve)):
            await self.service.add_endpoint(EndpointConfig(name=name, subject=subject, handler=handler))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        for t in list(self._tasks):
            t.cancel()

    def _spawn(self, coro: Awaitable[None]) -> None:
        # The micro endpoint awaits handlers one at a time: serve each request in its own task.
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_query(self, req: Request) -> None:
        self._spawn(self._serve(req))

    async def _on_quote(self, req: Request) -> None:
        async def quote(data: bytes) -> bytes:
            q = decode_json(Query, data, "the query", whole="query")
            return encode(await self.gateway.quote(q, identify(self.auth, req.headers, q.tenant, "hs:query")))
        self._spawn(self._call(req, quote))

    async def _on_reserve(self, req: Request) -> None:
        async def reserve(data: bytes) -> bytes:
            r = decode_json(ReserveRequest, data, "the reservation request", whole="reservation request")
            r.tenant = identify(self.auth, req.headers, r.tenant, "hs:reserve").tenant
            return encode(await self.gateway.reserve(r))
        self._spawn(self._call(req, reserve))

    async def _call(self, req: Request, handler: Callable[[bytes], Awaitable[bytes]]) -> None:
        try:
            await req.respond(await handler(req.data))
        except HomeskilletError as exc:
            await req.respond_error(str(exc.status), header_text(exc.message), data=encode(error_reply(exc)))
        except Exception as exc:  # never leave a caller without an answer
            log.exception("request_crashed", subject=req.subject)
            err = HomeskilletError(f"internal error: {type(exc).__name__}")
            await req.respond_error("500", err.message, data=encode(error_reply(err)))

    async def _streamed(self, query: Query, who: Principal | None, reply: str) -> Answer:
        """Serve ``query``, publishing its text to ``reply`` as AnswerChunks (in order: one publisher)."""
        offset = 0
        items = streamed(lambda sink: self.gateway.ask(query, who, reply=reply, stream=sink))
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for item in items:
                if isinstance(item, Answer):
                    return item
                await self.nc.publish(reply, encode(AnswerChunk(query_id=query.query_id, offset=offset, text=item)))
                offset += len(item)
        raise HomeskilletError("the streamed query ended without an answer")

    async def _serve(self, req: Request) -> None:
        query: Query | None = None
        try:
            query = decode_json(Query, req.data, "the query", whole="query")
            who = identify(self.auth, req.headers, query.tenant, "hs:query")
            inbox = req._msg.reply or ""
            if inbox and (req.headers or {}).get(STREAM_HEADER) == "1":
                answer = await self._streamed(query, who, inbox)
            else:
                answer = await self.gateway.ask(query, who, reply=inbox)
            if await self._may_answer(query):
                await req.respond(encode(answer))
        except HomeskilletError as exc:
            reply = error_reply(exc, query.query_id if query else "")
            if await self._may_answer(query):
                await req.respond_error(str(exc.status), header_text(exc.message), data=encode(reply))
        except Exception as exc:  # never leave a caller without an answer
            log.exception("query_crashed")
            err = HomeskilletError(f"internal error: {type(exc).__name__}")
            await req.respond_error("500", err.message, data=encode(error_reply(err)))
        # Answered: forget its record (not on cancellation: then a peer answers from the record).
        if query is not None and self.parking is not None:
            await self.parking.finish(query.query_id)

    async def _may_answer(self, query: Query | None) -> bool:
        return query is None or self.parking is None or await self.parking.may_answer(query.query_id)
