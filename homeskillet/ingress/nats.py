"""NATS ingress: the ``homeskillet`` micro service, endpoints ``hs.query`` (Query → Answer),
``hs.quote`` (Query → QuoteReply: negotiated, not executed) and ``hs.reserve`` (ReserveRequest →
Reservation).

Discoverable through ``$SRV.PING/INFO/STATS``. Errors are service error headers
(``Nats-Service-Error``, ``Nats-Service-Error-Code`` = the HTTP-like status) with an ErrorReply
JSON body. The adapter only decodes, calls the gateway, encodes.

Who may publish here is the NATS server's business (accounts, users, permissions); the tenant in
the message is trusted, so give each tenant its own NATS user with publish rights only to the
subjects it may use, or front it with the HTTP/MCP ingresses, which take the tenant from a JWT.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from .. import __version__
from ..errors import BadRequest, HomeskilletError
from ..gateway import Gateway, error_reply
from ..parking import ParkingLot
from ..subjects import Subjects
from ..telemetry import get_logger
from ..wire import Answer, Query, ReserveRequest, decode_query, encode

__all__ = ["NatsIngress", "respond"]

log = get_logger("homeskillet.ingress.nats")

T = TypeVar("T")
_reserve_request = msgspec.json.Decoder(ReserveRequest)


def _decode_error(exc: Exception, what: str = "query") -> BadRequest:
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"the {what} does not fit the schema: {exc}", term=what)
    return BadRequest(f"the {what} is not valid JSON: {exc}", term=what)


def _decode(decode: Callable[[bytes], T], data: bytes, what: str) -> T:
    try:
        return decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _decode_error(exc, what) from None


async def respond(nc: NATS, reply: str, outcome: Answer | HomeskilletError, query_id: str = "") -> None:
    """Send an answer, or an error with micro-service error headers, to a caller's reply subject
    (used for queries resumed from the durable queue, whose original request message is gone)."""
    if isinstance(outcome, Answer):
        await nc.publish(reply, encode(outcome))
    else:
        await nc.publish(reply, encode(error_reply(outcome, query_id)), headers={
            "Nats-Service-Error": outcome.message, "Nats-Service-Error-Code": str(outcome.status)})


class NatsIngress:
    def __init__(self, nc: NATS, subjects: Subjects, gateway: Gateway, parking: ParkingLot | None = None) -> None:
        self.nc, self.subjects, self.gateway = nc, subjects, gateway
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
            return encode(await self.gateway.quote(_decode(decode_query, data, "query")))
        self._spawn(self._call(req, quote))

    async def _on_reserve(self, req: Request) -> None:
        async def reserve(data: bytes) -> bytes:
            return encode(await self.gateway.reserve(_decode(_reserve_request.decode, data, "reservation request")))
        self._spawn(self._call(req, reserve))

    async def _call(self, req: Request, handler: Callable[[bytes], Awaitable[bytes]]) -> None:
        try:
            await req.respond(await handler(req.data))
        except HomeskilletError as exc:
            await req.respond_error(str(exc.status), exc.message, data=encode(error_reply(exc)))
        except Exception as exc:  # never leave a caller without an answer
            log.exception("request_crashed", subject=req.subject)
            err = HomeskilletError(f"internal error: {exc!r}")
            await req.respond_error("500", err.message, data=encode(error_reply(err)))

    async def _serve(self, req: Request) -> None:
        query: Query | None = None
        try:
            try:
                query = decode_query(req.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise _decode_error(exc) from None
            answer = await self.gateway.ask(query, reply=req._msg.reply or "")
            if await self._may_answer(query):
                await req.respond(encode(answer))
        except HomeskilletError as exc:
            reply = error_reply(exc, query.query_id if query else "")
            if await self._may_answer(query):
                await req.respond_error(str(exc.status), exc.message, data=encode(reply))
        except Exception as exc:  # never leave a caller without an answer
            log.exception("query_crashed")
            err = HomeskilletError(f"internal error: {exc!r}")
            await req.respond_error("500", err.message, data=encode(error_reply(err)))
        # Answered: forget its record (not on cancellation: then a peer answers from the record).
        if query is not None and self.parking is not None:
            await self.parking.finish(query.query_id)

    async def _may_answer(self, query: Query | None) -> bool:
        return query is None or self.parking is None or await self.parking.may_answer(query.query_id)
