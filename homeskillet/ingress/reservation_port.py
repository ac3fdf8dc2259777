"""A reservation on its own local port (the design documents' compatibility option).

The original design gave each model endpoint a port (custom models in 3000–15000). Homeskillet
addresses a reservation by NATS subject and HTTP path; when a reservation asks for
``local_port``, it is also served on the first free port of ``HttpSettings.reservation_ports``:
``POST /v1/chat/completions`` (OpenAI-compatible) and ``POST /api/v1/inference`` (a Query in, an
Answer out), both pinned to that reservation, with the same auth as the main API (another
tenant's token gets 404). The port closes when the reservation is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..auth import Authenticator
from ..config import HttpSettings
from ..errors import HomeskilletError
from ..gateway import Gateway
from ..telemetry import get_logger
from ..wire import Query, Reservation
from .http import on_error
from .http_common import HttpContext, context, json, principal, read_body
from .openai_api import completion_response, to_query
from .openai_wire import ChatCompletionRequest

__all__ = ["ReservationPorts"]

log = get_logger("homeskillet.ingress.reservation_port")


def _app(gateway: Gateway, auth: Authenticator, settings: HttpSettings, reservation_id: str) -> Starlette:
    async def chat(request: Request) -> Response:
        req = await read_body(request, ChatCompletionRequest)
        who = principal(request, req.tenant, scope="hs:reserve")
        return completion_response(req, await context(request).gateway.infer_on(reservation_id, who.tenant,
                                                                                 to_query(req)))

    async def inference(request: Request) -> Response:
        q = await read_body(request, Query, what="the query")
        who = principal(request, q.tenant, scope="hs:reserve")
        return json(await context(request).gateway.infer_on(reservation_id, who.tenant, q))

    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                            Route("/api/v1/inference", inference, methods=["POST"])],
                    exception_handlers={HomeskilletError: on_error, HTTPException: on_error, Exception: on_error})
    app.state.hs = HttpContext(gateway, auth, max_body_bytes=settings.max_body_bytes)
    return app


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Any:  # signals belong to the process, not to one reservation's port
        yield


class ReservationPorts:
    """One uvicorn server per reservation that asked for a port, on this process's loop."""

    def __init__(self, gateway: Gateway, auth: Authenticator, settings: HttpSettings, *, host: str = "127.0.0.1",
                 low: int = 3000, high: int = 15000) -> None:
        if not 0 < low <= high <= 65535:
            raise HomeskilletError(f"reservation port range {low}..{high} is not within 1..65535")
        self.gateway, self.auth, self.settings, self.host = gateway, auth, settings, host
        self.low, self.high = low, high
        self.open_ports: dict[str, tuple[int, _Server, asyncio.Task[None], socket.socket]] = {}

    def _bind(self) -> socket.socket:
        taken = {p for p, *_ in self.open_ports.values()}
        for port in range(self.low, self.high + 1):
            if port in taken:
                continue
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            try:
                sock.bind((self.host, port))
            except OSError:
                sock.close()
                continue
            sock.listen(256)
            return sock
        raise HomeskilletError(f"no free local port in {self.low}..{self.high} for the reservation", term="local_port")

    async def open(self, res: Reservation) -> int:
        sock = self._bind()
        server = _Server(uvicorn.Config(_app(self.gateway, self.auth, self.settings, res.reservation_id),
                                        log_level="warning", lifespan="off", access_log=False))
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"reservation-port:{res.reservation_id}")
        port = int(sock.getsockname()[1])
        self.open_ports[res.reservation_id] = (port, server, task, sock)
        log.info("reservation_port_open", reservation_id=res.reservation_id, port=port)
        return port

    async def close(self, reservation_id: str) -> None:
        entry = self.open_ports.pop(reservation_id, None)
        if entry is None:
            return
        _, server, task, sock = entry
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sock.close()

    async def close_all(self) -> None:
        for rid in list(self.open_ports):
            await self.close(rid)
