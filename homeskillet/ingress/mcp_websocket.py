"""MCP over WebSocket, server side, as in the transport proposal (SEP-1288).

One JSON-RPC message per UTF-8 text frame, subprotocol ``mcp``. The SDK's transports hand
``Server.run`` a pair of memory streams of ``SessionMessage``; this one fills them from a starlette
``WebSocket``. A frame that is not JSON, or not a JSON-RPC message, is answered here on the wire
(-32700 parse error, -32600 invalid request) and the connection keeps going; a binary frame
closes it with 1003 (unsupported data), as the proposal says.

Each inbound message carries the ``WebSocket`` as its request context, so a handler sees the
upgrade request (and the principal the endpoint authenticated) as ``ctx.request``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    JSONRPCMessage,
    JSONRPCNotification,
    RequestId,
    jsonrpc_message_adapter,
)
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

__all__ = ["SUBPROTOCOL", "BadFrame", "encode_message", "parse_frame", "websocket_server"]

SUBPROTOCOL = "mcp"
UNSUPPORTED_DATA = 1003  # RFC 6455 close code for a frame type we do not accept

ServerStreams = tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]


class BadFrame(Exception):
    """A text frame that is not a JSON-RPC message; ``reply`` is the error to send back."""

    def __init__(self, reply: JSONRPCError) -> None:
        super().__init__(reply.error.message)
        self.reply = reply


def _error(code: int, message: str, request_id: RequestId | None = None) -> BadFrame:
    return BadFrame(JSONRPCError(jsonrpc="2.0", id=request_id, error=ErrorData(code=code, message=message)))


def _id_of(text: str) -> RequestId | None:
    """The request id of an invalid message, when one can be read, so the caller can correlate."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)) else None


def parse_frame(text: str) -> JSONRPCMessage:
    """One text frame as a JSON-RPC message, or BadFrame carrying the JSON-RPC error to answer with."""
    try:
        message: JSONRPCMessage = jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValidationError as exc:
        # Validating straight from JSON keeps the good path to one parse; only errors look closer.
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise _error(PARSE_ERROR, "Parse error: the frame is not valid JSON") from None
        stripped = text.lstrip()
        if stripped.startswith("["):
            raise _error(INVALID_REQUEST, "Invalid Request: MCP does not use JSON-RPC batches; "
                                          "send one message per frame") from None
        raise _error(INVALID_REQUEST, "Invalid Request: not a JSON-RPC 2.0 message (a request needs "
                                      "'jsonrpc': '2.0', an integer or string 'id', a 'method' and object "
                                      "'params'; a notification has no 'id')", _id_of(text)) from None
    # A request whose id is null, boolean or fractional validates as a notification (extra keys are
    # ignored) and would never be answered: refuse it. Notifications are rare, so this look is cheap.
    if isinstance(message, JSONRPCNotification) and '"id"' in text:
        obj = json.loads(text)
        if isinstance(obj, dict) and "id" in obj:
            raise _error(INVALID_REQUEST, "Invalid Request: 'id' must be an integer or a string")
    return message


def encode_message(message: JSONRPCMessage) -> str:
    return message.model_dump_json(by_alias=True, exclude_unset=True)


@asynccontextmanager
async def websocket_server(websocket: WebSocket) -> AsyncIterator[ServerStreams]:
    """Streams for ``Server.run`` over an accepted WebSocket; serve until either side closes."""
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)
    send_lock = anyio.Lock()  # the reader answers bad frames while the writer sends responses

    async def send(text: str) -> None:
        async with send_lock:
            await websocket.send_text(text)

    async def reader() -> None:
        async with read_writer:
            while True:
                frame = await websocket.receive()
                if frame["type"] == "websocket.disconnect":
                    return
                text = frame.get("text")
                if text is None:
                    await websocket.close(UNSUPPORTED_DATA, "MCP over WebSocket uses UTF-8 text frames only")
                    return
                try:
                    message = parse_frame(text)
                except BadFrame as bad:
                    await send(encode_message(bad.reply))
                    continue
                await read_writer.send(SessionMessage(message, ServerMessageMetadata(request_context=websocket)))

    async def writer() -> None:
        async with write_reader:
            async for out in write_reader:
                await send(encode_message(out.message))
                # An idle session must not keep its last reply alive: a tools/list result is ~120 KiB
                # of Python objects, which 1,000 held sessions would multiply (bench/mcp_sessions.py).
                del out

    gone = (WebSocketDisconnect, OSError, RuntimeError, anyio.ClosedResourceError, anyio.BrokenResourceError)

    async def run_reader() -> None:
        # Ending closes the read stream, which ends the caller's Server.run.
        with suppress(*gone):
            await reader()

    async def run_writer(tg: TaskGroup) -> None:
        try:
            await writer()
        except gone:
            tg.cancel_scope.cancel()  # a dead socket ends the connection, Server.run included

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_reader)
        tg.start_soon(run_writer, tg)
        try:
            yield read_stream, write_stream
        finally:
            tg.cancel_scope.cancel()
