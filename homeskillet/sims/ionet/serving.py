"""Request admission (outage, key, injected faults) and the inference a running container serves.

A CaaS deployment running ``vllm/vllm-openai`` answers OpenAI chat completions on its own public
URL. The simulator serves that at ``POST /deployment/{id}/v1/chat/completions`` on the same app
(``public_url`` from ``…/containers`` points there). It answers 503 while the container starts and
502 once the deployment has completed, expired or been destroyed: the gateway has no upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response

from homeskillet.sims.ionet.envelope import ApiError, json_response, problem
from homeskillet.sims.ionet.openai_compat import Completion, decode_chat, openai_error, respond
from homeskillet.sims.ionet.state import IonetSim

__all__ = ["Fault", "api", "chat_completions", "draw_fault", "list_models"]


class Fault(NamedTuple):
    status: int
    message: str
    headers: dict[str, str] | None = None


async def draw_fault(sim: IonetSim) -> Fault | None:
    """One draw per failure mode, in a fixed order, so a seed replays the same faults."""
    faults, rng = sim.config.faults, sim.random
    if faults.outage:
        return Fault(503, "Service Unavailable")
    if rng.chance(faults.rate_limit_rate):
        return Fault(429, "Too Many Requests", {"Retry-After": "1"})
    if rng.chance(faults.unavailable_rate):
        return Fault(503, "Service Unavailable")
    if rng.chance(faults.timeout_rate):
        await rng.sleep_ms(faults.timeout_s * 1000)  # the client should have given up by now
        return Fault(504, "Gateway Timeout")
    return None


Handler = Callable[[Request, IonetSim], Awaitable[Response]]


def api(handler: Handler, *, auth: bool = True) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an io.net API handler: outage, ``x-api-key``, faults, clock refresh, FastAPI envelope."""

    async def endpoint(request: Request) -> Response:
        sim: IonetSim = request.app.state.sim
        try:
            if sim.config.faults.outage:
                raise ApiError(503, "Service Unavailable")
            if auth:
                key = request.headers.get("x-api-key")
                if key is None:  # the header is a required parameter in io.net's OpenAPI
                    raise ApiError(422, [problem("missing", ["header", "x-api-key"], "Field required")])
                if key != sim.config.api_key:
                    raise ApiError(401, "Invalid API key")
            if fault := await draw_fault(sim):
                raise ApiError(fault.status, fault.message, fault.headers)
            sim.refresh()
            return await handler(request, sim)
        except ApiError as exc:
            return exc.response()

    return endpoint


def _served_model(spec: dict[str, Any]) -> str | None:
    """The model vLLM was started with (``--model X`` or ``--model=X``); None: answer any model."""
    args: list[str] = spec.get("args") or []
    for i, arg in enumerate(args):
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
        if arg == "--model" and i + 1 < len(args):
            return args[i + 1]
    return None


_NO_UPSTREAM = "Bad Gateway: no running container behind this URL"


async def list_models(request: Request) -> Response:
    sim: IonetSim = request.app.state.sim
    sim.refresh()
    dep = sim.deployments.get(request.path_params["deployment_id"])
    if dep is None or dep.kind != "caas" or dep.phase != "running":
        return openai_error(502, _NO_UPSTREAM, "BadGateway")
    model = _served_model(dep.spec) or dep.spec["image_url"]
    return json_response({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "vllm"}]})


async def chat_completions(request: Request) -> Response:
    sim: IonetSim = request.app.state.sim
    sim.refresh()
    dep = sim.deployments.get(request.path_params["deployment_id"])
    if dep is None or dep.kind != "caas" or dep.phase in ("completed", "destroyed", "failed"):
        return openai_error(502, _NO_UPSTREAM, "BadGateway")
    if dep.phase == "starting":
        return openai_error(503, "Service Unavailable: container is starting", "ServiceUnavailable")
    if fault := await draw_fault(sim):
        return openai_error(fault.status, fault.message, "ServiceUnavailable", fault.headers)
    body = decode_chat(await request.body())
    if isinstance(body, Response):
        return body
    served = _served_model(dep.spec)
    if served is not None and body.model != served:
        return openai_error(404, f"The model `{body.model}` does not exist.", "NotFoundError")
    cid = f"chatcmpl-{sim.new_id().replace('-', '')}"
    done = Completion.make(sim.random, body, id=cid, created=int(sim.now()))
    return await respond(sim.random, done, stream=body.stream)
