"""The MCP ingress: Homeskillet's tools on the official ``mcp`` SDK (v2), served two ways.

* ``/mcp/ws``: WebSocket, subprotocol ``mcp``, one JSON-RPC message per text frame (SEP-1288),
  through our transport (``mcp_websocket.py``); clients connect with ``homeskillet.mcp_ws``.
* ``/mcp``: Streamable HTTP through the SDK's own session manager, which needs its lifespan run:
  put ``McpServer.lifespan()`` in the app's lifespan (``mcp_app`` does).

Auth: the bearer token of the upgrade request (WebSocket) or of each HTTP request is checked by
``auth.Authenticator.identify``, the rule every ingress shares; without a valid one the caller gets
401 and no session, and an ``X-Tenant`` header or a ``tenant`` tool argument naming another tenant
than the token's gets 403 (the same tenant is fine). The principal
travels with each message as ``ctx.request.state.principal``, so every tool acts for the token's
tenant. HTTP sessions are bound to the principal that opened them (the SDK answers 404 to another).
A WebSocket session ends (close code 1008) when its token expires; the client reconnects with a new one.
With auth off, the tenant is the ``X-Tenant`` header or the default tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST, CallToolRequestParams, CallToolResult, ListToolsResult, PaginatedRequestParams
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from .. import __version__
from ..auth import Authenticator, AuthSettings, Principal
from ..errors import HomeskilletError
from ..gateway import Gateway
from ..telemetry import get_logger
from .mcp_tools import McpTools
from .mcp_websocket import SUBPROTOCOL, websocket_server

__all__ = ["McpServer", "mcp_app"]

log = get_logger("homeskillet.ingress.mcp")

INSTRUCTIONS = (
    "Homeskillet serves AI inference under covenants (cost ceilings, latency targets, VRAM, fallbacks) "
    "across many pools. Use 'query' to get an answer, 'pools' to see live capacity and prices, "
    "'reserve'/'release' to hold compute ahead of use and 'allocation_metrics' to watch it."
)
POLICY_VIOLATION = 1008  # WebSocket close code when the server cannot send an HTTP denial


class _Asgi:
    """A plain ASGI callable, so starlette routes the raw scope to it (not a request/response)."""

    def __init__(self, handler: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def _denial(status: int, message: str, term: str | None = None) -> Response:
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    error = {401: "invalid_token", 403: "forbidden"}.get(status, "invalid_request")
    return JSONResponse({"error": error, "error_description": message, **({"term": term} if term else {})},
                        status_code=status, headers=headers)


class McpServer:
    """The MCP server over one gateway: ``routes()`` to mount, ``lifespan()`` to run."""

    def __init__(self, gateway: Gateway, *, authenticator: Authenticator | None = None,
                 name: str = "homeskillet") -> None:
        self.tools = McpTools(gateway)
        self.authenticator = authenticator or Authenticator(AuthSettings())
        self.server: Server[Any] = Server(name, version=__version__, instructions=INSTRUCTIONS,
                                          on_list_tools=self._list_tools, on_call_tool=self._call_tool)
        self._manager: StreamableHTTPSessionManager | None = None

    # --- MCP handlers ------------------------------------------------------------------------------

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
                          ) -> ListToolsResult:
        return ListToolsResult(tools=self.tools.tools)

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: CallToolRequestParams) -> CallToolResult:
        return await self.tools.call(self._principal(ctx), params.name, params.arguments)

    def _principal(self, ctx: ServerRequestContext[Any]) -> Principal:
        conn = ctx.request
        principal = getattr(conn.state, "principal", None) if isinstance(conn, HTTPConnection) else None
        if isinstance(principal, Principal):
            return principal
        if not self.authenticator.enabled:  # an in-process session (no transport): the default tenant
            return self.authenticator.authenticate(None)
        raise MCPError(INVALID_REQUEST, "this session carries no authenticated principal")

    def _authenticate(self, conn: HTTPConnection) -> Principal:
        # The one identity rule (auth.py); scopes are checked per tool.
        return self.authenticator.identify(conn.headers.get("authorization"),
                                           (("X-Tenant", conn.headers.get("x-tenant")),), scope=None)

    # --- transports --------------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        return [WebSocketRoute("/mcp/ws", self._websocket), Route("/mcp", _Asgi(self._http))]

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the Streamable HTTP session manager (the SDK allows one run per manager: a new one each time)."""
        manager = StreamableHTTPSessionManager(app=self.server)
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def _websocket(self, ws: WebSocket) -> None:
        if SUBPROTOCOL not in ws.scope.get("subprotocols", []):
            await self._deny(ws, 400, f"offer the {SUBPROTOCOL!r} WebSocket subprotocol (Sec-WebSocket-Protocol)")
            return
        try:
            ws.state.principal = self._authenticate(ws)
        except HomeskilletError as exc:  # 401 without a valid token, 403 for another tenant's X-Tenant
            await self._deny(ws, exc.status, exc.message, exc.term)
            return
        await ws.accept(subprotocol=SUBPROTOCOL)
        # A WebSocket outlives a request: the token is checked at the upgrade, so the session ends
        # when the token does, and the client reconnects with a fresh one.
        with anyio.move_on_after(ws.state.principal.seconds_left()) as lifetime:
            async with websocket_server(ws) as (read_stream, write_stream):
                await self.server.run(read_stream, write_stream, self.server.create_initialization_options())
        if lifetime.cancelled_caught:
            log.info("mcp_ws_token_expired", tenant=ws.state.principal.tenant)
            with suppress(RuntimeError, OSError):
                await ws.close(POLICY_VIOLATION, "the bearer token expired; reconnect with a new token")

    async def _deny(self, ws: WebSocket, status: int, message: str, term: str | None = None) -> None:
        log.info("mcp_ws_refused", status=status, reason=message)
        if "websocket.http.response" in ws.scope.get("extensions", {}):
            await ws.send_denial_response(_denial(status, message, term))
        else:
            await ws.close(POLICY_VIOLATION, message[:120])  # a close reason must fit in 123 bytes

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = HTTPConnection(scope)
        try:
            principal = self._authenticate(conn)
        except HomeskilletError as exc:
            await _denial(exc.status, exc.message, exc.term)(scope, receive, send)
            return
        if self._manager is None:
            await _denial(503, "the MCP HTTP transport is not running: serve the app with its lifespan "
                               "(McpServer.lifespan)")(scope, receive, send)
            return
        conn.state.principal = principal
        # The SDK binds each HTTP session to the user that opened it and answers 404 to anyone else.
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=principal.tenant,
                                                      subject=principal.subject or None,
                                                      scopes=list(principal.scopes)))
        await self._manager.handle_request(scope, receive, send)


def mcp_app(gateway: Gateway, *, authenticator: Authenticator | None = None) -> Starlette:
    """A standalone ASGI app serving only the MCP endpoints (the HTTP API mounts ``McpServer`` itself)."""
    mcp = McpServer(gateway, authenticator=authenticator)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.lifespan():
            yield

    return Starlette(routes=mcp.routes(), lifespan=lifespan)
