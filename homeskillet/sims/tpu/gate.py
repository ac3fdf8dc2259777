"""Admission for every Google API call: outage, OAuth bearer token, IAM, injected faults, clock."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from homeskillet.sims.tpu.errors import GoogleError
from homeskillet.sims.tpu.queued import Queue
from homeskillet.sims.tpu.state import TpuSim

__all__ = ["draw_fault", "google_api", "queue_of", "sim_of"]

_HELP = ("Expected OAuth 2 access token, login cookie or other valid authentication credential. "
         "See https://developers.google.com/identity/sign-in/web/devconsole-project.")


def _info(reason: str, domain: str = "googleapis.com", **metadata: str) -> dict[str, object]:
    return {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": domain,
            "metadata": {"service": "tpu.googleapis.com", **metadata}}


async def draw_fault(sim: TpuSim) -> GoogleError | None:
    """One seeded draw per failure mode, in a fixed order."""
    faults, rng = sim.config.faults, sim.random
    if faults.outage:
        return GoogleError("UNAVAILABLE", "The service is currently unavailable.")
    if rng.chance(faults.rate_limit_rate):
        return GoogleError("RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Requests' and limit "
                           "'Requests per minute' of service 'tpu.googleapis.com'.",
                           [_info("RATE_LIMIT_EXCEEDED", quota_metric="tpu.googleapis.com/default_requests")],
                           {"Retry-After": "1"})
    if rng.chance(faults.unavailable_rate):
        return GoogleError("UNAVAILABLE", "The service is currently unavailable.")
    if rng.chance(faults.timeout_rate):
        await rng.sleep_ms(faults.timeout_s * 1000)
        return GoogleError("DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")
    return None


def sim_of(request: Request) -> TpuSim:
    sim: TpuSim = request.app.state.sim
    return sim


def queue_of(request: Request) -> Queue:
    queue: Queue = request.app.state.queue
    return queue


Handler = Callable[[Request], Awaitable[Response]]


def _permission(resource: str, request: Request, item: bool) -> str:
    """IAM permission of the call, e.g. ``tpu.nodes.create`` or ``tpu.nodes.stop``."""
    last = request.url.path.rsplit("/", 1)[-1]
    if item and request.method == "POST":
        verb = last.rsplit(":", 1)[-1] if ":" in last else "update"
    else:
        verbs = {"GET": "get" if item else "list", "POST": "create", "DELETE": "delete"}
        verb = verbs.get(request.method, "")
    return f"tpu.{resource}.{verb}"


def google_api(resource: str, handler: Handler, *, item: bool = False) -> Handler:
    """Wrap a handler: faults, ``Authorization: Bearer``, project IAM, then ``tick()`` the clock."""

    async def endpoint(request: Request) -> Response:
        sim = sim_of(request)
        permission = _permission(resource, request, item)
        try:
            if sim.config.faults.outage:
                raise GoogleError("UNAVAILABLE", "The service is currently unavailable.")
            auth = request.headers.get("authorization", "")
            if not auth.lower().startswith("bearer "):
                raise GoogleError("UNAUTHENTICATED", "Request is missing required authentication "
                                  f"credential. {_HELP}", [_info("CREDENTIALS_MISSING")])
            if auth[7:].strip() != sim.config.api_key:
                raise GoogleError("UNAUTHENTICATED", "Request had invalid authentication credentials. "
                                  f"{_HELP}", [_info("ACCESS_TOKEN_TYPE_UNSUPPORTED")])
            project = request.path_params.get("project", "")
            allowed = sim.knobs.projects
            if allowed is not None and project not in allowed:
                denied = _info("IAM_PERMISSION_DENIED", "iam.googleapis.com", permission=permission)
                raise GoogleError("PERMISSION_DENIED", f"Permission '{permission}' denied on resource "
                                  f"'//tpu.googleapis.com/projects/{project}' (or it may not exist).",
                                  [denied])
            if fault := await draw_fault(sim):
                raise fault
            sim.tick()
            return await handler(request)
        except GoogleError as exc:
            return exc.response()

    return endpoint
