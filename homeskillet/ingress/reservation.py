"""NATS endpoint of reservations: ``<prefix>.reservation.<id>`` takes a Query, returns an Answer.

The caller is identified as on ``hs.query`` (``nats.identify``: with auth on, the bearer token in the
``Authorization`` header, scope ``hs:reserve``; 401/403 otherwise), and the reservation must be the
caller's tenant's (another tenant's id is NotFound, as if it did not exist). Errors are
micro-service error headers with an ErrorReply body, as on ``hs.query``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..auth import Authenticator, AuthSettings
from ..errors import HomeskilletError
from ..gateway import Gateway
from ..subjects import Subjects
from ..telemetry import get_logger
from ..wire import Query
from .decoding import decode_json
from .nats import identify, respond

__all__ = ["ReservationIngress"]

log = get_logger("homeskillet.ingress.reservation")


class ReservationIngress:
    def __init__(self, nc: NATS, subjects: Subjects, gateway: Gateway, auth: Authenticator | None = None) -> None:
        self.nc, self.subjects, self.gateway = nc, subjects, gateway
        self.auth = auth or Authenticator(AuthSettings())
        self._sub: Any = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subjects.reservation_all, queue="homeskillet",
                                            cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()

    async def _on_msg(self, msg: Msg) -> None:
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> None:
        if not msg.reply:
            return
        rid = msg.subject.rsplit(".", 1)[-1]
        try:
            query = decode_json(Query, msg.data, "the query", whole="query")
            who = identify(self.auth, msg.headers, query.tenant, "hs:reserve")
            await respond(self.nc, msg.reply, await self.gateway.infer_on(rid, who.tenant, query))
        except HomeskilletError as exc:
            await respond(self.nc, msg.reply, exc)
        except Exception as exc:  # never leave a caller without an answer
            log.exception("reservation_query_crashed", reservation_id=rid)
            await respond(self.nc, msg.reply, HomeskilletError(f"internal error: {type(exc).__name__}"))
