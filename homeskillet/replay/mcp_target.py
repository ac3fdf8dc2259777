"""``homeskillet replay --target mcp``: queries as calls of the MCP ``query`` tool.

Sessions are the official SDK's ``ClientSession`` over our WebSocket transport (``/mcp/ws``,
``homeskillet.mcp_ws``). Opening one costs the server a handshake (~7 ms of CPU), so the sender
keeps a small pool and reuses it: a session carries many calls at once (JSON-RPC ids; the server
runs each request in its own task), and a new one is opened only when every session of the tenant
is busy, up to ``max_sessions`` in all. With auth off the server takes the tenant from the
upgrade's ``X-Tenant`` header, fixed for the session, so sessions are kept per tenant; with a
token every session acts for the token's tenant (no ``X-Tenant`` is sent: another would be refused).

A tool result maps to the same outcome as the other targets: ``QueryResult`` to an ``Answer``, a
tool error's ``ErrorReply`` (or a JSON-RPC error) to an explicit error, and nothing back (timeout,
connection gone) to *lost*.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import anyio
import msgspec
from mcp import ClientSession
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT, CallToolResult, TextContent
from websockets.exceptions import InvalidStatus, WebSocketException

from ..errors import HomeskilletError
from ..ingress.mcp_tools import QueryResult
from ..mcp_ws import websocket_client
from ..wire import Answer, ErrorReply, Query

__all__ = ["McpSender", "ws_url"]

_SCHEMES = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
# What a call can raise when the session or its socket is gone: the query is lost, the session replaced.
_GONE = (OSError, anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream,
         WebSocketException)
# The Query fields that are ``query`` tool arguments (the tenant never is: it is the session's).
_QUERY_ARGS = frozenset({"prompt", "messages", "covenant", "model", "overrides", "max_tokens", "temperature"})


def ws_url(base: str) -> str:
    """The MCP WebSocket endpoint under an HTTP API base URL (``http://host:8080`` → ``ws://host:8080/mcp/ws``)."""
    parts = urlsplit(base.strip())
    if parts.scheme not in _SCHEMES or not parts.netloc:
        raise HomeskilletError(f"--url {base!r} is not the HTTP API's base URL: give http(s)://host:port "
                               "(the MCP WebSocket endpoint /mcp/ws is derived from it)")
    path = parts.path.rstrip("/")
    if not path.endswith("/mcp/ws"):
        path += "/mcp/ws"
    return urlunsplit((_SCHEMES[parts.scheme], parts.netloc, path, "", ""))


def _outcome(res: CallToolResult, tenant: str) -> Answer | ErrorReply:
    data = res.structured_content
    if res.is_error:
        if isinstance(data, dict) and data.get("kind") == "error":
            return msgspec.convert(data, ErrorReply)
        text = " ".join(c.text for c in res.content if isinstance(c, TextContent))
        return ErrorReply(code="tool_error", message=text or "the query tool failed without saying why")
    r = msgspec.convert(data, QueryResult)
    return Answer(query_id=r.query_id, tenant=tenant, text=r.text, covenant=r.covenant, covenant_id=r.covenant_id,
                  fusion="", fragments=r.fragments, cost_usd=r.cost_usd, latency_ms=r.latency_ms)


@dataclass(eq=False)
class _Session:
    """One session, held open by its own task (the SDK's task groups must be left in the task that
    entered them)."""

    tenant: str
    ready: asyncio.Future[ClientSession] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    dead: bool = False

    async def hold(self, url: str, token: str | None) -> None:
        try:
            # With a token the server acts for the token's tenant and refuses another in X-Tenant (403).
            headers = {} if token else {"X-Tenant": self.tenant}
            async with websocket_client(url, headers=headers, token=token) as (read, write), \
                    ClientSession(read, write) as session:
                await session.initialize()
                self.ready.set_result(session)
                await self.closing.wait()
        except Exception as exc:  # handed to whoever waits for this session; the caller decides
            if not self.ready.done():
                self.ready.set_exception(exc)
        finally:
            self.dead = True


class McpSender:
    """Queries as ``tools/call query`` on a bounded pool of MCP sessions (one or more per tenant)."""

    def __init__(self, base_url: str, token: str | None = None, *, max_sessions: int = 64,
                 calls_per_session: int = 16) -> None:
        self.url, self.token = ws_url(base_url), token
        self.max_sessions, self.calls_per_session = max_sessions, calls_per_session
        self.sessions: dict[str, list[_Session]] = {}  # the live ones, by tenant
        self.tasks: set[asyncio.Task[None]] = set()  # every session's holder, retired ones too, until it ends
        self.opened = 0  # sessions opened over the run (replacements included)

    @property
    def open_sessions(self) -> int:
        return sum(len(v) for v in self.sessions.values())

    def _open(self, tenant: str) -> _Session:
        s = _Session(tenant)
        task = asyncio.create_task(s.hold(self.url, self.token))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.sessions.setdefault(tenant, []).append(s)
        self.opened += 1
        return s

    def _retire(self, s: _Session) -> None:
        s.dead = True
        s.closing.set()  # its task leaves the session and the socket

    def _pick(self, tenant: str) -> _Session:
        mine = self.sessions.setdefault(tenant, [])
        mine[:] = [s for s in mine if not s.dead]
        best = min(mine, key=lambda s: s.inflight, default=None)
        # A tenant always gets one session (the tenant is the session's); more only under the bound.
        if best is None or (best.inflight >= self.calls_per_session and self.open_sessions < self.max_sessions):
            return self._open(tenant)
        return best

    async def start(self, tenants: list[str]) -> None:
        """Open one session per tenant before the load starts, so a wrong URL or a refused token is
        one clear error now rather than every query lost, and no handshake lands on a measured query."""
        opening = [self._pick(t) for t in dict.fromkeys(tenants)]
        results = await asyncio.gather(*(asyncio.shield(s.ready) for s in opening), return_exceptions=True)
        failed = next((r for r in results if isinstance(r, BaseException)), None)
        if failed is not None:
            await self.close()
            hint = (" (401: give a valid --token or HOMESKILLET_TOKEN)"
                    if isinstance(failed, InvalidStatus) and failed.response.status_code == 401 else "")
            raise HomeskilletError(f"cannot open an MCP session at {self.url}: {type(failed).__name__}: "
                                   f"{failed}{hint}") from None

    async def __call__(self, query: Query, timeout: float) -> Answer | ErrorReply | None:
        s = self._pick(query.tenant)
        s.inflight += 1
        args = {k: v for k, v in msgspec.to_builtins(query).items() if k in _QUERY_ARGS and v is not None}
        try:
            async with asyncio.timeout(timeout):
                session = await asyncio.shield(s.ready)
                res = await session.call_tool("query", args)
            return _outcome(res, query.tenant)
        except TimeoutError:  # past the longest hard deadline: lost, but the session may well be fine
            return None
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                return None
            if exc.code == CONNECTION_CLOSED:
                self._retire(s)
                return None
            return ErrorReply(code="mcp_error", message=f"JSON-RPC error {exc.code}: {exc.message}", status=400)
        except _GONE:  # the socket is gone (or never opened): lost, and the next call opens a new session
            self._retire(s)
            return None
        except msgspec.ValidationError:  # a result that is neither a QueryResult nor an ErrorReply
            return None
        finally:
            s.inflight -= 1

    async def close(self) -> None:
        for s in (s for v in self.sessions.values() for s in v):
            s.closing.set()
        tasks = set(self.tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=5.0)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
        self.sessions.clear()

