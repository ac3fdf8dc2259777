"""The RunPod simulator as an ASGI app: GraphQL, REST v1 and each pod's proxied OpenAI server.

Paths served:
  POST /graphql                         ``https://api.runpod.io/graphql``: gpuTypes (+ lowestPrice), pod,
                                        myself { pods }, dataCenters, countryCodes; podFindAndDeployOnDemand,
                                        podRentInterruptable, podStop, podResume, podBidResume, podTerminate
  POST/GET /v1/pods, GET/DELETE /v1/pods/{podId}, POST /v1/pods/{podId}/stop|start
                                        ``https://rest.runpod.io/v1`` (deprecated: ``Deprecation``/``Sunset``)
  POST /proxy/{podId}-{port}/v1/chat/completions (JSON, or SSE with ``stream``), GET /proxy/{podId}-{port}/health
                                        really ``https://{podId}-{port}.proxy.runpod.net/...``
  POST /_sim/clock/advance, POST /_sim/pods/{podId}/preempt, GET /_sim/state   simulator controls
Auth is ``Authorization: Bearer <key>`` or ``?api_key=`` (runpod-python's way). GraphQL refusals are
HTTP 200 with ``errors``; unreadable documents are 400; REST refusals are ``{"error", "status"}``.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.base import SimConfig, count_tokens
from homeskillet.sims.common import JSON, ChatRequest, bounded_completion, chat_stream
from homeskillet.sims.runpod.catalog import GpuType
from homeskillet.sims.runpod.graphql import GraphQLError, Resolver, execute, parse
from homeskillet.sims.runpod.state import Clock, RunPodError, RunPodState, SimClock
from homeskillet.sims.runpod.views import (
    GqlDeployInput,
    LowestPriceInput,
    PodIdInput,
    RestPodBody,
    lowest_price,
    pod_graphql,
    pod_rest,
)

__all__ = ["ChatRequest", "GraphQLRequest", "create_app"]

Handler = Callable[[Request], Awaitable[Response]]
Envelope = Callable[[int, str], Response]
V1_HEADERS = {"Deprecation": "true", "Sunset": "Sun, 15 Nov 2026 00:00:00 GMT",
              "Link": '<https://docs.runpod.io/api-reference-v2>; rel="successor-version"'}


class GraphQLRequest(msgspec.Struct, kw_only=True):
    query: str
    variables: dict[str, Any] | None = None
    operationName: str | None = None


  # a non-finite float becomes null, never a 500


def _gql_fail(status: int, msg: str) -> Response:
    return JSON({"errors": [{"message": msg}], "data": None}, status_code=status)


def _rest_fail(status: int, msg: str) -> Response:
    return JSON({"error": msg, "status": status}, status_code=status, headers=V1_HEADERS)


def _gateway(msg: str) -> Response:
    return JSON({"error": {"message": msg, "type": "bad_gateway", "code": 502}}, status_code=502)


def _input(args: dict[str, Any], cls: type[Any]) -> Any:
    try:
        return msgspec.convert(args.get("input") or {}, cls)
    except msgspec.ValidationError as exc:
        raise GraphQLError(f'Variable "input" got an invalid value: {exc}') from None


def _resolvers(sim: RunPodState) -> dict[str, dict[str, Resolver]]:
    def wrap(fn: Resolver) -> Resolver:
        def run(args: dict[str, Any]) -> Any:
            try:
                return fn(args)
            except RunPodError as exc:
                raise GraphQLError(exc.message) from None
        return run

    def gpu_types(args: dict[str, Any]) -> list[dict[str, Any]]:
        filt = args.get("input")
        filt = filt if isinstance(filt, dict) else {}
        ids = filt.get("ids") or ([filt["id"]] if filt.get("id") else None)
        ids = ids if isinstance(ids, list) else None
        return [{**g.graphql(), "lowestPrice": functools.partial(_lowest, g)}
                for g in sim.gpu_types.values() if not ids or g.id in ids]

    def _lowest(gpu: GpuType, args: dict[str, Any]) -> dict[str, Any]:
        return lowest_price(sim, gpu, _input(args, LowestPriceInput))

    def deploy(interruptible: bool) -> Resolver:
        return lambda a: pod_graphql(sim, sim.deploy(_input(a, GqlDeployInput).spec(interruptible)))

    def pod(args: dict[str, Any]) -> dict[str, Any] | None:
        found = sim.pods.get(_input(args, PodIdInput).pod_id)
        return pod_graphql(sim, found) if found else None  # a terminated pod reads as null

    def resume(a: dict[str, Any]) -> dict[str, Any]:
        req = _input(a, PodIdInput)
        return pod_graphql(sim, sim.resume(req.pod_id, req.gpu_count, req.bid_per_gpu))

    queries: dict[str, Resolver] = {
        "gpuTypes": gpu_types, "pod": pod,
        "myself": lambda a: {"id": "user_sim", "pods": [pod_graphql(sim, p) for p in sim.pods.values()],
                             "currentSpendPerHr": sum(p.cost_per_hr for p in sim.pods.values()
                                                      if p.desired == "RUNNING")},
        "dataCenters": lambda a: [{"id": d.id, "name": d.name, "location": d.country_code, "listed": True}
                                  for d in sim.data_centers.values()],
        "countryCodes": lambda a: sorted({d.country_code for d in sim.data_centers.values()}),
    }
    mutations: dict[str, Resolver] = {
        "podFindAndDeployOnDemand": deploy(False), "podRentInterruptable": deploy(True),
        "podStop": lambda a: pod_graphql(sim, sim.stop(_input(a, PodIdInput).pod_id)),
        "podResume": resume, "podBidResume": resume,
        "podTerminate": lambda a: sim.terminate(_input(a, PodIdInput).pod_id),
    }
    return {"query": {k: wrap(v) for k, v in queries.items()},
            "mutation": {k: wrap(v) for k, v in mutations.items()}}


class _Api:
    def __init__(self, sim: RunPodState) -> None:
        self.sim = sim
        self.roots = _resolvers(sim)

    def guard(self, handler: Handler, fail: Envelope) -> Handler:
        """Auth and provider-level faults, drawn in a fixed order so a seed repeats."""

        async def run(request: Request) -> Response:
            sim, faults = self.sim, self.sim.config.faults
            sim.count("requests")
            if faults.outage or sim.rnd.chance(faults.unavailable_rate):
                return fail(503, "Service Unavailable: RunPod is temporarily unavailable.")
            header = request.headers.get("authorization", "")
            bearer = header.lower().startswith("bearer ")
            key = header[7:] if bearer else request.query_params.get("api_key", "")
            if not secrets.compare_digest(key.encode(), sim.config.api_key.encode()):
                return fail(401, "Unauthorized request, please check your API key.")
            if sim.rnd.chance(faults.rate_limit_rate):
                sim.count("rate_limited")
                return fail(429, "Too many requests; slow down and retry.")
            if sim.rnd.chance(faults.timeout_rate):
                await sim.rnd.sleep_ms(faults.timeout_s * 1000.0)
                return fail(504, "Gateway Timeout")
            try:
                return await handler(request)
            except RunPodError as exc:
                return fail(exc.status, exc.message)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                return fail(400, str(exc))
            except GraphQLError as exc:  # unreadable document or unknown root field
                return fail(400, exc.message)

        return run

    async def graphql(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=GraphQLRequest)
        data, errors = execute(parse(body.query, body.variables, body.operationName), self.roots)
        return JSON({"data": data, "errors": errors} if errors else {"data": data})

    async def rest_create(self, request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=RestPodBody)
        if body.compute_type == "CPU" or not body.gpu_type_ids:
            raise RunPodError("gpuTypeIds is required; CPU pods are not simulated.")
        return JSON(pod_rest(self.sim, self.sim.deploy(body.spec())), status_code=201, headers=V1_HEADERS)

    async def rest_list(self, request: Request) -> Response:
        return JSON([pod_rest(self.sim, p) for p in self.sim.pods.values()], headers=V1_HEADERS)

    async def rest_get(self, request: Request) -> Response:
        return JSON(pod_rest(self.sim, self.sim.get(request.path_params["pod_id"])), headers=V1_HEADERS)

    async def rest_stop(self, request: Request) -> Response:
        return JSON(pod_rest(self.sim, self.sim.stop(request.path_params["pod_id"])), headers=V1_HEADERS)

    async def rest_start(self, request: Request) -> Response:
        return JSON(pod_rest(self.sim, self.sim.resume(request.path_params["pod_id"])), headers=V1_HEADERS)

    async def rest_delete(self, request: Request) -> Response:
        self.sim.terminate(request.path_params["pod_id"])
        return Response(status_code=204, headers=V1_HEADERS)

    # -- the pod's OpenAI-compatible server behind RunPod's HTTP proxy --------------------------
    def _target(self, request: Request) -> tuple[str, Any]:
        pod_id, _, port = request.path_params["host"].rpartition("-")
        pod = self.sim.pods.get(pod_id)
        if pod is not None and f"{port}/http" not in pod.spec.ports:
            return pod_id, None  # the proxy only forwards ports declared as http
        return pod_id, pod if self.sim.is_up(pod) else None

    async def chat(self, request: Request) -> Response:
        sim = self.sim
        pod_id, pod = self._target(request)
        if pod is None:
            return _gateway(f"{pod_id}: pod is not running or the port is not exposed over http")
        try:
            body = msgspec.json.decode(await request.body(), type=ChatRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return JSON({"object": "error", "message": str(exc), "type": "BadRequestError", "param": None,
                         "code": 400}, status_code=400)
        prompt = "\n".join(m.content if isinstance(m.content, str) else "".join(
            p["text"] for p in m.content or [] if isinstance(p, dict) and isinstance(p.get("text"), str))
            for m in body.messages)
        text = bounded_completion(body.model, prompt, body.max_tokens or body.max_completion_tokens or 256)
        out_tokens, in_tokens = count_tokens(text), count_tokens(prompt)
        ms = sim.rnd.latency_ms(out_tokens, body.model)
        evict = pod.spec.interruptible and sim.rnd.chance(sim.config.faults.preempt_rate)
        if body.stream:
            return self._stream(pod.id, body.model, text, ms, evict)
        if evict:
            await sim.rnd.sleep_ms(ms / 2)
            sim.preempt(pod.id)  # evicted mid-generation: the proxy loses its upstream
        else:
            await sim.rnd.sleep_ms(ms)
        if not sim.is_up(sim.pods.get(pod.id)):
            sim.count("preempted_inference")
            return _gateway(f"{pod_id}: upstream connection closed (pod exited)")
        sim.count("inferences")
        return JSON({
            "id": f"chatcmpl-{sim.rnd.rng.getrandbits(64):016x}", "object": "chat.completion",
            "created": int(sim.clock.now()), "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": in_tokens, "completion_tokens": out_tokens,
                      "total_tokens": in_tokens + out_tokens},
        }, headers={"x-sim-latency-ms": f"{ms:.3f}"})

    def _stream(self, pod_id: str, model: str, text: str, ms: float, evict: bool) -> Response:
        sim = self.sim

        def cut() -> None:  # outbid mid-generation: the proxy loses its upstream where the pod stopped
            sim.preempt(pod_id)
            sim.count("preempted_inference")

        sim.count("inferences" if not evict else "streams_cut")
        return chat_stream(sim.rnd, completion_id=f"chatcmpl-{sim.rnd.rng.getrandbits(64):016x}",
                           created=int(sim.clock.now()), model=model, text=text, latency_ms=ms,
                           cut=cut if evict else None)

    async def health(self, request: Request) -> Response:
        return Response(status_code=200) if self._target(request)[1] else _gateway("pod is not running")

    # -- simulator controls (not part of RunPod's API) ------------------------------------------
    async def control(self, request: Request) -> Response:
        try:
            if request.url.path.endswith("/preempt"):
                self.sim.preempt(request.path_params["pod_id"])
            elif request.url.path.endswith("/advance"):
                body = msgspec.json.decode(await request.body() or b"{}", type=dict[str, float])
                seconds = body.get("seconds", 0.0)
                if not isinstance(self.sim.clock, SimClock) or not 0 <= seconds <= 1e9:
                    raise RunPodError("needs a SimClock and 0 <= seconds <= 1e9")
                self.sim.clock.advance(seconds)
        except RunPodError as exc:
            return _rest_fail(exc.status, exc.message)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _rest_fail(400, str(exc))
        return JSON(self.sim.snapshot())


def create_app(
    config: SimConfig | None = None, *, clock: Clock | Callable[[], float] | None = None
) -> Starlette:
    """A RunPod simulator; its world is ``app.state.sim`` (a ``RunPodState``). Default clock: ``SimClock``."""
    api = _Api(RunPodState(config or SimConfig(), clock))

    def rest(path: str, handler: Handler, method: str) -> Route:
        return Route(path, api.guard(handler, _rest_fail), methods=[method])

    app = Starlette(routes=[
        Route("/graphql", api.guard(api.graphql, _gql_fail), methods=["POST"]),
        rest("/v1/pods", api.rest_create, "POST"),
        rest("/v1/pods", api.rest_list, "GET"),
        rest("/v1/pods/{pod_id}", api.rest_get, "GET"),
        rest("/v1/pods/{pod_id}", api.rest_delete, "DELETE"),
        rest("/v1/pods/{pod_id}/stop", api.rest_stop, "POST"),
        rest("/v1/pods/{pod_id}/start", api.rest_start, "POST"),
        Route("/proxy/{host}/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/proxy/{host}/health", api.health, methods=["GET"]),
        Route("/_sim/clock/advance", api.control, methods=["POST"]),
        Route("/_sim/pods/{pod_id}/preempt", api.control, methods=["POST"]),
        Route("/_sim/state", api.control, methods=["GET"]),
    ])
    app.state.sim = api.sim
    return app
