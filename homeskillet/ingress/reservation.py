"""NATS endpoint of reservations: ``<prefix>.reservation.<id>`` takes a Query, returns an Answer.

The reservation's tenant must match the query's tenant (another tenant's id is NotFound, as if it
did not exist). Errors are micro-service error headers with an ErrorReply body, as on ``hs.query``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..errors import BadRequest, HomeskilletError
from ..gateway import Gateway
from ..subjects import Subjects
from ..telemetry import get_logger
from ..wire import decode_query
from .nats import respond

__all__ = ["ReservationIngress"]

log = get_logger("homeskillet.ingress.reservation")


class ReservationIngress:
    def __init__(self, nc: NATS, subjects: Subjects, gateway: Gateway) -> None:
        self.nc, self.subjects, self.gateway = nc, subjects, gateway
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
            try:
                query = decode_query(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BadRequest(f"the query is not valid: {exc}", term="query") from None
            await respond(self.nc, msg.reply, await self.gateway.infer_on(rid, query.tenant, query))
        except HomeskilletError as exc:
            await respond(self.nc, msg.reply, exc)
        except Exception as exc:  # never leave a caller without an answer
            log.exception("reservation_query_crashed", reservation_id=rid)
            await respond(self.nc, msg.reply, HomeskilletError(f"internal error: {exc!r}"))
