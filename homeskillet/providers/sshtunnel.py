"""HTTP through SSH channels: an httpx transport whose connections are SSH ``direct-tcpip``
channels instead of sockets.

httpcore does the HTTP/1.1 (pooling, keep-alive, streaming); we give it a network backend
(httpcore's public extension point) that opens a channel for each "TCP connection". The URL's
host and port are the destination *as the SSH server sees it*, so ``http://127.0.0.1:11434``
reaches the node's own loopback. No remote command is run and no local port is opened: the
request bytes travel as channel data, never through a shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

if TYPE_CHECKING:
    from asyncssh import SSHReader, SSHWriter

__all__ = ["ChannelOpener", "ChannelStream", "TunnelBackend", "TunnelTransport"]

# (host, port) -> the reader and writer of a new direct-tcpip channel to that address
ChannelOpener = Callable[[str, int], Awaitable[tuple["SSHReader[bytes]", "SSHWriter[bytes]"]]]

# httpcore's exceptions and httpx's, most specific first (httpx maps them the same way).
_MAPPED: list[tuple[type[Exception], type[httpx.HTTPError]]] = [
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
]


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except tuple(core for core, _ in _MAPPED) as exc:
        mapped = next(ours for core, ours in _MAPPED if isinstance(exc, core))
        raise mapped(str(exc)) from exc


class ChannelStream(httpcore.AsyncNetworkStream):
    """One direct-tcpip channel, seen by httpcore as a TCP stream."""

    def __init__(self, reader: SSHReader[bytes], writer: SSHWriter[bytes]) -> None:
        self._reader, self._writer = reader, writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore.ReadTimeout(f"no data from the SSH channel within {timeout}s") from None
        except Exception as exc:  # asyncssh.Error, ConnectionLost, OSError: the channel is gone
            raise httpcore.ReadError(f"SSH channel lost: {exc}") from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(buffer)
                await self._writer.drain()
        except TimeoutError:
            raise httpcore.WriteTimeout(f"the SSH channel took no data within {timeout}s") from None
        except Exception as exc:
            raise httpcore.WriteError(f"SSH channel lost: {exc}") from exc

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):  # closing a channel of a dead connection is fine
            self._writer.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("https through an SSH tunnel is not supported: SSH already encrypts; "
                                    "use an http:// URL for the node")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # idle and readable means the far end closed: httpcore drops it
            return self._reader.at_eof() or self._writer.is_closing()
        return None


class TunnelBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, open_channel: ChannelOpener) -> None:
        self._open = open_channel

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None) -> ChannelStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await self._open(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no SSH channel to {host}:{port} within {timeout}s") from None
        return ChannelStream(reader, writer)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable through this SSH tunnel")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        if close := getattr(self._stream, "aclose", None):
            with _mapped():
                await close()


class TunnelTransport(httpx.AsyncBaseTransport):
    """An httpx transport over SSH channels, pooled and kept alive like sockets."""

    def __init__(self, open_channel: ChannelOpener, *, max_connections: int = 16,
                 keepalive_expiry: float = 4.0) -> None:
        # Idle channels expire before common servers' keep-alive (uvicorn's is 5 s), so a reused
        # one is rarely closed under us.
        self._pool = httpcore.AsyncConnectionPool(network_backend=TunnelBackend(open_channel),
                                                  max_connections=max_connections,
                                                  keepalive_expiry=keepalive_expiry)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, AsyncIterable)
        req = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host, port=request.url.port,
                             target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _mapped():
            resp = await self._pool.handle_async_request(req)
        assert isinstance(resp.stream, AsyncIterable)
        return httpx.Response(status_code=resp.status, headers=resp.headers, stream=_Body(resp.stream),
                              extensions=resp.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
