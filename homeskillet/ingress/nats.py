"""NATS ingress: the ``homeskillet`` micro service, endpoint ``hs.query``.

Discoverable through ``$SRV.PING/INFO/STATS``. Errors are service error headers
(``Nats-Service-Error``, ``Nats-Service-Error-Code`` = the HTTP-like status) with an ErrorReply
JSON body. The adapter only decodes, calls the gateway, encodes.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from .. import __version__
from ..errors import BadRequest, HomeskilletError
from ..gateway import Gateway, error_reply
from ..subjects import Subjects
from ..telemetry import get_logger
from ..wire import Answer, Query, decode_query, encode

__all__ = ["NatsIngress", "respond"]

log = get_logger("homeskillet.ingress.nats")


def _decode_error(exc: Exception) -> BadRequest:
    if isinstance(exc, msgspec.ValidationError):
        return BadRequest(f"the query does not fit the schema: {exc}", term="query")
    return BadRequest(f"the query is not valid JSON: {exc}", term="query")


async def respond(nc: NATS, reply: str, outcome: Answer | HomeskilletError, query_id: str = "") -> None:
    """Send an answer, or an error with micro-service error headers, to a caller's reply subject
    (used for queries resumed from the durable queue, whose original request message is gone)."""
    if isinstance(outcome, Answer):
        await nc.publish(reply, encode(outcome))
    else:
        await nc.publish(reply, encode(error_reply(outcome, query_id)), headers={
            "Nats-Service-Error": outcome.message, "Nats-Service-Error-Code": str(outcome.status)})


class NatsIngress:
    def __init__(self, nc: NATS, subjects: Subjects, gateway: Gateway) -> None:
        self.nc, self.subjects, self.gateway = nc, subjects, gateway
        self.service: Service | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.service = await add_service(
            self.nc, name="homeskillet", version=__version__,
            description="Covenant-driven fusion and strike scheduling: send a Query, get an Answer",
            queue_group="homeskillet",
        )
        await self.service.add_endpoint(EndpointConfig(name="query", subject=self.subjects.query,
                                                       handler=self._on_query))

    async def stop(self) -> None:
        if self.service is not None:
            await self.service.stop()
        for t in list(self._tasks):
            t.cancel()

    async def _on_query(self, req: Request) -> None:
        # The micro endpoint awaits handlers one at a time: serve each query in its own task.
        task = asyncio.create_task(self._serve(req))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, req: Request) -> None:
        query: Query | None = None
        try:
            try:
                query = decode_query(req.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise _decode_error(exc) from None
            answer = await self.gateway.ask(query, req._msg.reply or "")
            await req.respond(encode(answer))
        except HomeskilletError as exc:
            reply = error_reply(exc, query.query_id if query else "")
            await req.respond_error(str(exc.status), exc.message, data=encode(reply))
        except Exception as exc:  # never leave a caller without an answer
            log.exception("query_crashed")
            err = HomeskilletError(f"internal error: {exc!r}")
            await req.respond_error("500", err.message, data=encode(error_reply(err)))
