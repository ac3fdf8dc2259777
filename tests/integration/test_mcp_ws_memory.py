"""The MCP WebSocket transport keeps nothing of a message once it is on the wire.

An idle session used to hold its last reply (often a tools/list result, ~120 KiB of objects), which
1,000 held sessions multiplied into ~120 MB (bench/mcp_sessions.py). Real uvicorn, a real
WebSocket client, our transport; the check is a weak reference to the message sent.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from typing import Any

import websockets.sync.client
from mcp.shared.message import SessionMessage
from mcp_types import JSONRPCResponse
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.typing import Subprotocol

from homeskillet.ingress.mcp_websocket import SUBPROTOCOL, websocket_server
from homeskillet.testing import serve_asgi


def test_a_sent_reply_is_not_kept_alive_by_an_idle_session() -> None:
    seen: dict[str, Any] = {}
    checked = threading.Event()

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept(subprotocol=SUBPROTOCOL)
        async with websocket_server(ws) as (read_stream, write_stream):
            reply = SessionMessage(JSONRPCResponse(jsonrpc="2.0", id=1, result={"tools": [{"name": "t"}] * 100}))
            ref = weakref.ref(reply)
            await write_stream.send(reply)
            del reply
            await read_stream.receive()  # the client got the reply and answered: the session is now idle
            gc.collect()
            seen["alive"] = ref() is not None
            checked.set()
            await read_stream.receive()  # until the client leaves

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    with serve_asgi(app, "/nothing") as url:
        ws_url = url.replace("http://", "ws://") + "/ws"
        with websockets.sync.client.connect(ws_url, subprotocols=[Subprotocol(SUBPROTOCOL)]) as client:
            assert json.loads(client.recv(timeout=10))["id"] == 1
            client.send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            assert checked.wait(10), "the server never saw the client's answer"
    assert seen["alive"] is False, "the transport still holds the reply it sent"
