"""The Vast.ai simulator as an ASGI app: REST under ``/api/v0`` plus each instance's inference server.

Paths served (real base ``https://console.vast.ai``):
  POST /api/v0/bundles/                     search offers (no key needed, as gpuhunt calls it)
  PUT  /api/v0/search/asks/                 search offers, ``{"select_cols": [...], "q": {...}}``
  PUT  /api/v0/asks/{offer_id}/             rent -> ``{"success": true, "new_contract": id}``
  GET  /api/v0/instances/                   ``{"instances": [...]}`` (dstack's listing)
  GET  /api/v0/instances/{id}/?owner=me     ``{"instances": {...} | null}``
  PUT  /api/v0/instances/{id}/              ``{"state": "stopped" | "running"}`` and/or ``{"label"}``
  DELETE /api/v0/instances/{id}/            destroy
  PUT  /api/v0/instances/bid_price/{id}/    ``{"client_id": "me", "price": x}``
  GET  /api/v1/instances/ (also /api/v0/api/v1/instances/)  paginated listing
  POST /instance/{id}/v1/chat/completions   the rented box's OpenAI server (JSON, or SSE with ``stream``); really
                                            ``http://{public_ipaddr}:{ports["8000/tcp"][0]["HostPort"]}``, here
                                            on the same app
  GET  /instance/{id}/health                that server's readiness probe
  POST /_sim/clock/advance, POST /_sim/instances/{id}/outbid, GET /_sim/state   simulator controls
Every path also answers without its trailing slash (httpx does not follow Starlette's redirect).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.base import SimConfig, count_tokens
from homeskillet.sims.common import bounded_completion, chat_stream
from homeskillet.sims.vastai.market import SearchError, search
from homeskillet.sims.vastai.state import Clock, SimClock, VastError, VastState
from homeskillet.sims.vastai.wire import (
    JSON,
    ChangeBid,
    ChangeState,
    ChatRequest,
    CreateInstance,
    SearchAsks,
    prompt_of,
)

__all__ = ["create_app"]

Handler = Callable[[Request], Awaitable[Response]]
_DOWN = "Vast.ai is temporarily unavailable; try again later."


def _fail(status: int, error: str, msg: str) -> JSON:
    return JSON({"success": False, "error": error, "msg": msg}, status_code=status)


def _gateway(msg: str) -> JSON:
    """What a client sees when the box behind the port is gone: a connection-level failure."""
    return JSON({"error": {"message": msg, "type": "connection_error", "code": 502}}, status_code=502)


def _enveloped(handler: Handler) -> Handler:
    """Our exceptions become Vast's ``success: false`` envelope."""

    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except VastError as exc:
            return _fail(exc.status, exc.error, exc.msg)
        except (msgspec.DecodeError, msgspec.ValidationError, SearchError) as exc:
            return _fail(400, "invalid_args", str(exc))

    return run


class _Api:
    def __init__(self, sim: VastState) -> None:
        self.sim = sim

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        key = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("api_key", "")
        return secrets.compare_digest(key.encode(), self.sim.config.api_key.encode())

    def guard(self, handler: Handler, *, auth: bool = True) -> Handler:
        """Provider-level faults and auth, drawn in a fixed order so a seed repeats, then the handler."""

        async def run(request: Request) -> Response:
            sim, faults = self.sim, self.sim.config.faults
            sim.count("requests")
            if faults.outage:
                return _fail(503, "service_unavailable", _DOWN)
            if auth and not self._authorized(request):
                return _fail(401, "auth_error", "Invalid or missing API key (Authorization: Bearer <key>).")
            if sim.rnd.chance(faults.rate_limit_rate):
                sim.count("rate_limited")
                return JSON({"detail": "API requests too frequent endpoint threshold=1.0"}, status_code=429)
            if sim.rnd.chance(faults.unavailable_rate):
                return _fail(503, "service_unavailable", _DOWN)
            if sim.rnd.chance(faults.timeout_rate):
                await sim.rnd.sleep_ms(faults.timeout_s * 1000.0)
                return _fail(504, "timeout", "The request timed out.")
            return await inner(request)

        inner = _enveloped(handler)
        return run

    # -- control plane --------------------------------------------------------------------------
    async def bundles(self, request: Request) -> Response:
        query = msgspec.json.decode(await request.body() or b"{}", type=dict[str, Any])
        return JSON({"offers": search(self.sim.offers, query)})

    async def search_asks(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body() or b"{}", type=SearchAsks)
        return JSON({"offers": search(self.sim.offers, body.q, body.select_cols)})

    async def create(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body() or b"{}", type=CreateInstance)
        image = body.image or (f"template:{body.template_hash_id}" if body.template_hash_id else None)
        if image is None:
            raise VastError(400, "invalid_args", "image or template_hash_id is required.")
        new_id = self.sim.create(
            request.path_params["offer_id"], image, price=body.price, disk=body.disk, label=body.label,
            env=body.env or {}, onstart=body.onstart,
        )
        return JSON({"success": True, "new_contract": new_id})

    async def show(self, request: Request) -> Response:
        inst = self.sim.instances.get(request.path_params["id"])
        return JSON({"instances": self.sim.show(inst) if inst else None})

    async def listing(self, request: Request) -> Response:
        return JSON({"instances": [self.sim.show(i) for i in self.sim.instances.values()]})

    async def listing_v1(self, request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "25"))
            start = int(request.query_params.get("after_token", "0"))
        except ValueError:
            raise VastError(400, "invalid_args", "limit and after_token must be integers.") from None
        if not 1 <= limit <= 1000 or start < 0:
            raise VastError(400, "invalid_args", "limit must be within 1..1000 and after_token >= 0.")
        rows = list(self.sim.instances.values())
        page = rows[start:start + limit]
        nxt = str(start + limit) if start + limit < len(rows) else None
        return JSON({"instances": [self.sim.show(i) for i in page], "next_token": nxt,
                     "total_instances": len(rows)})

    async def change(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body() or b"{}", type=ChangeState)
        inst = self.sim.get(request.path_params["id"])
        if body.label is not None:
            inst.label = body.label
        if body.state is not None:
            self.sim.set_state(inst.id, body.state)
        return JSON({"success": True})

    async def destroy(self, request: Request) -> Response:
        self.sim.destroy(request.path_params["id"])
        return JSON({"success": True})

    async def bid(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body() or b"{}", type=ChangeBid)
        self.sim.set_bid(request.path_params["id"], body.price)
        return JSON({"success": True})

    # -- the instance's own OpenAI-compatible server --------------------------------------------
    async def chat(self, request: Request) -> Response:
        sim, iid = self.sim, request.path_params["id"]
        inst = sim.serving(iid)
        if inst is None:
            return _gateway(f"connect to instance {iid} failed: connection refused (not running)")
        try:
            body = msgspec.json.decode(await request.body(), type=ChatRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return JSON({"object": "error", "message": str(exc), "type": "BadRequestError", "param": None,
                         "code": 400}, status_code=400)
        prompt = prompt_of(body.messages)
        text = bounded_completion(body.model, prompt, body.max_tokens or body.max_completion_tokens or 256)
        out_tokens, in_tokens = count_tokens(text), count_tokens(prompt)
        ms = sim.rnd.latency_ms(out_tokens, body.model)
        evict = inst.bid is not None and sim.rnd.chance(sim.config.faults.preempt_rate)
        if body.stream:
            return self._stream(iid, body.model, text, ms, evict)
        if evict:
            await sim.rnd.sleep_ms(ms / 2)
            sim.outbid(iid)  # evicted mid-generation: the socket drops before a byte of the answer
        else:
            await sim.rnd.sleep_ms(ms)
        if sim.serving(iid) is None:
            sim.count("preempted_inference")
            return _gateway(f"instance {iid}: connection reset by peer (instance stopped: outbid)")
        sim.count("inferences")
        return JSON({
            "id": f"chatcmpl-{sim.rnd.rng.getrandbits(64):016x}", "object": "chat.completion",
            "created": int(sim.clock.now()), "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": in_tokens, "completion_tokens": out_tokens,
                      "total_tokens": in_tokens + out_tokens},
        }, headers={"x-sim-latency-ms": f"{ms:.3f}"})

    def _stream(self, iid: int, model: str, text: str, ms: float, evict: bool) -> Response:
        sim = self.sim

        def cut() -> None:  # outbid mid-generation: the stream stops where the box did
            sim.outbid(iid)
            sim.count("preempted_inference")

        sim.count("inferences" if not evict else "streams_cut")
        return chat_stream(sim.rnd, completion_id=f"chatcmpl-{sim.rnd.rng.getrandbits(64):016x}",
                           created=int(sim.clock.now()), model=model, text=text, latency_ms=ms,
                           cut=cut if evict else None)

    async def health(self, request: Request) -> Response:
        if self.sim.serving(request.path_params["id"]) is None:
            return _gateway("connection refused")
        return Response(status_code=200)

    # -- simulator controls (not part of Vast's API) --------------------------------------------
    async def advance(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body() or b"{}", type=dict[str, float])
        seconds = body.get("seconds", 0.0)
        if not isinstance(self.sim.clock, SimClock) or not 0 <= seconds <= 1e9:
            raise VastError(400, "invalid_args", "needs a SimClock and 0 <= seconds <= 1e9")
        self.sim.clock.advance(seconds)
        return JSON({"now": self.sim.clock.now()})

    async def outbid(self, request: Request) -> Response:
        self.sim.outbid(request.path_params["id"])
        return JSON({"success": True})

    async def summary(self, request: Request) -> Response:
        return JSON({"now": self.sim.clock.now(), "instances": len(self.sim.instances),
                     "billed_usd": self.sim.total_cost(), "counters": self.sim.counters})


def create_app(
    config: SimConfig | None = None, *, clock: Clock | Callable[[], float] | None = None
) -> Starlette:
    """A Vast.ai simulator; its world is ``app.state.sim`` (a ``VastState``). Default clock: ``SimClock``."""
    api = _Api(VastState(config or SimConfig(), clock))
    table: list[tuple[str, Handler, str, bool]] = [
        ("/api/v0/bundles/", api.bundles, "POST", False),
        ("/api/v0/search/asks/", api.search_asks, "PUT", False),
        ("/api/v0/asks/{offer_id:int}/", api.create, "PUT", True),
        ("/api/v0/instances/", api.listing, "GET", True),
        ("/api/v0/instances/bid_price/{id:int}/", api.bid, "PUT", True),
        ("/api/v0/instances/{id:int}/", api.show, "GET", True),
        ("/api/v0/instances/{id:int}/", api.change, "PUT", True),
        ("/api/v0/instances/{id:int}/", api.destroy, "DELETE", True),
        ("/api/v1/instances/", api.listing_v1, "GET", True),
        ("/api/v0/api/v1/instances/", api.listing_v1, "GET", True),
    ]
    routes = [Route(p, api.guard(h, auth=a), methods=[m]) for path, h, m, a in table
              for p in (path, path.rstrip("/"))]
    routes += [
        Route("/instance/{id:int}/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/instance/{id:int}/health", api.health, methods=["GET"]),
        Route("/_sim/clock/advance", _enveloped(api.advance), methods=["POST"]),
        Route("/_sim/instances/{id:int}/outbid", _enveloped(api.outbid), methods=["POST"]),
        Route("/_sim/state", api.summary, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.sim = api.sim
    return app
