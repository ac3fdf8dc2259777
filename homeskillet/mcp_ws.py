"""MCP over WebSocket, client side: connect the official SDK's ``ClientSession`` to ``/mcp/ws``.

The SDK (v2) ships no WebSocket transport; this is one, as in the transport proposal (SEP-1288):
subprotocol ``mcp``, one JSON-RPC message per UTF-8 text frame. It yields the same pair of
streams the SDK's own transports do::

    from mcp import ClientSession
    from homeskillet.mcp_ws import websocket_client

    async with websocket_client("ws://127.0.0.1:8080/mcp/ws", token=token) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            result = await session.call_tool("query", {"prompt": "hello"})

A frame from the server that is not a JSON-RPC message reaches the session as an ``Exception``
item (the SDK logs and skips it); a refused upgrade (401 without a valid token) raises
``websockets.exceptions.InvalidStatus`` carrying the HTTP response.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage
from mcp_types import jsonrpc_message_adapter
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

__all__ = ["SUBPROTOCOL", "websocket_client"]

SUBPROTOCOL = "mcp"

ClientStreams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


def _parse(frame: str | bytes) -> SessionMessage | Exception:
    if isinstance(frame, bytes):
        return ValueError("the server sent a binary frame; MCP over WebSocket uses text frames")
    try:
        return SessionMessage(jsonrpc_message_adapter.validate_json(frame, by_name=False))
    except ValidationError as exc:
        return exc


@asynccontextmanager
async def websocket_client(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    token: str | None = None,
    open_timeout: float = 10.0,
    max_size: int | None = 16 * 1024 * 1024,
) -> AsyncIterator[ClientStreams]:
    """Streams for ``mcp.ClientSession`` over a WebSocket to ``url`` (``ws://`` or ``wss://``).

    ``token`` is sent as ``Authorization: Bearer <token>`` on the upgrade request; ``headers`` adds
    any others. Leaving the block closes the connection.
    """
    extra = dict(headers or {})
    if token is not None:
        extra["Authorization"] = f"Bearer {token}"
    async with connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)], additional_headers=extra,
                       open_timeout=open_timeout, max_size=max_size) as ws:
        if ws.subprotocol != SUBPROTOCOL:
            raise ConnectionError(f"{url} did not agree to the {SUBPROTOCOL!r} subprotocol "
                                  f"(it chose {ws.subprotocol!r}); is it an MCP WebSocket endpoint?")
        read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reader, ws, read_writer)
            tg.start_soon(_writer, ws, write_reader)
            try:
                yield read_stream, write_stream
            finally:
                tg.cancel_scope.cancel()


async def _reader(ws: ClientConnection, out: MemoryObjectSendStream[SessionMessage | Exception]) -> None:
    # The server closing the socket closes the read stream: the session sees the end of the connection.
    async with out:
        with suppress(ConnectionClosed, anyio.ClosedResourceError, anyio.BrokenResourceError):
            async for frame in ws:
                await out.send(_parse(frame))


async def _writer(ws: ClientConnection, inbox: MemoryObjectReceiveStream[SessionMessage]) -> None:
    # A closed socket closes the inbox, so the session's next send fails instead of waiting forever.
    async with inbox:
        with suppress(ConnectionClosed):
            async for message in inbox:
                await ws.send(message.message.model_dump_json(by_alias=True, exclude_unset=True))
