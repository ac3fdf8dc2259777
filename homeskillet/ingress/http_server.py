"""Serve the HTTP app (with the MCP endpoints mounted) with uvicorn on the runtime's own loop.

The socket is bound before uvicorn starts, so the port is known at once (``listen`` may say port
0) and early connections wait in the backlog rather than being refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette

from ..auth import Authenticator
from ..config import Settings
from ..errors import HomeskilletError
from ..gateway import Gateway
from ..telemetry import get_logger
from .http import create_http_app

__all__ = ["HttpServer", "bind_listen", "build_app", "parse_listen", "raise_fd_limit"]

log = get_logger("homeskillet.ingress.http")


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise HomeskilletError(f"HTTP listen address {listen!r} is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_app(gateway: Gateway, settings: Settings) -> Starlette:
    """Our HTTP API plus the MCP server's routes (``/mcp/ws``, ``/mcp``) and its lifespan."""
    from .mcp import McpServer

    auth = Authenticator(settings.auth)
    mcp = McpServer(gateway, authenticator=auth)

    @contextlib.asynccontextmanager
    async def mcp_lifespan(_: Starlette) -> AsyncIterator[None]:
        async with mcp.lifespan():
            yield

    return create_http_app(gateway, auth=auth, settings=settings.http, extra_routes=mcp.routes(),
                           lifespans=[mcp_lifespan])


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit; return the soft limit now.

    Every HTTP or WebSocket client holds a descriptor, and a shell's usual soft limit (1024) would
    cap the server near 1,000 sessions: past it uvicorn's accepts fail and clients time out in
    the handshake (measured with bench/mcp_sessions.py). The hard limit stays the operator's cap.
    """
    try:
        import resource
    except ImportError:  # not POSIX: nothing to raise
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be the soft one for files (Linux caps it at fs.nr_open).
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("fd_limit_kept", soft=soft, hard=hard, error=str(exc))
            return soft
        log.info("fd_limit_raised", soft=target, was=soft)
        return target
    return soft


def bind_listen(listen: str) -> socket.socket:
    """A TCP socket bound to ``listen`` (HOST:PORT), not yet listening; a taken port is an error
    naming it."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only for such sockets;
    # with proto 0 every response waits out Nagle + delayed ACK (measured: +42 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise HomeskilletError(f"HTTP port {port} on {host} is already in use: stop whatever holds it "
                                   f"or choose another address (homeskillet up --http HOST:PORT)") from None
        raise HomeskilletError(f"cannot listen on {listen}: {exc.strerror}") from None
    return sock


class _Server(uvicorn.Server):
    """Leaves signals to the process (``homeskillet up`` stops the whole runtime on SIGINT/SIGTERM)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    def __init__(self, server: uvicorn.Server, sock: socket.socket, task: asyncio.Task[Any]) -> None:
        self.server, self.sock, self.task = server, sock, task
        host, port = sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    @classmethod
    async def start(cls, gateway: Gateway, settings: Settings, sock: socket.socket | None = None) -> HttpServer:
        """Serve on ``sock`` (bound by ``bind_listen`` early in start-up, so a taken port fails at
        once) or on a socket bound now to ``settings.http.listen``."""
        raise_fd_limit()
        app = build_app(gateway, settings)
        if sock is None:
            sock = bind_listen(settings.http.listen)
        sock.listen(2048)
        server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                                               timeout_graceful_shutdown=5))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        self = cls(server, sock, task)
        log.info("http_listening", url=self.url, auth=settings.auth.enabled)
        return self

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close()
