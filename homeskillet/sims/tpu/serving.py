"""Inference on a TPU node: an OpenAI-compatible server (vLLM/JetStream style) on the node's VM.

In reality it listens on the node's ``networkEndpoints`` address; the simulator serves it at
``POST /node/{zone}/{node_id}/v1/chat/completions`` on the same app. It answers only while the
node is READY (503 otherwise). On a spot or preemptible node each request may, with
``preempt_rate``, be the one during which Google evicts the VM: the node turns PREEMPTED and the
request fails part-way (502, or an error event mid-stream).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from homeskillet.sims.ionet.openai_compat import Completion, decode_chat, openai_error, respond
from homeskillet.sims.tpu.errors import google_json
from homeskillet.sims.tpu.gate import draw_fault, sim_of
from homeskillet.sims.tpu.state import Node, TpuSim

__all__ = ["routes"]


def _find(sim: TpuSim, zone: str, node_id: str) -> Node | None:
    found = [n for n in sim.nodes.values() if n.zone == zone and n.node_id == node_id]
    return found[0] if len(found) == 1 else None


async def chat_completions(request: Request) -> Response:
    sim = sim_of(request)
    sim.tick()
    node = _find(sim, request.path_params["zone"], request.path_params["node_id"])
    if node is None:
        return openai_error(502, "Bad Gateway: no TPU node behind this address", "BadGateway")
    if node.state != "READY":
        return openai_error(503, f"TPU node {node.name} is {node.state}", "ServiceUnavailable")
    if fault := await draw_fault(sim):
        return openai_error(fault.http_status, fault.message, "ServiceUnavailable", fault.headers)
    body = decode_chat(await request.body())
    if isinstance(body, Response):
        return body
    cid = f"chatcmpl-{sim.hex(32)}"
    done = Completion.make(sim.random, body, id=cid, created=int(sim.now()))
    if node.spot and sim.random.chance(sim.config.faults.preempt_rate):
        cut_at = sim.random.rng.random()
        sim.preempt(node.node_id, node.zone, node.project)
        return await respond(sim.random, done, stream=body.stream, cut_at=cut_at,
                             cut_message=f"Upstream connection reset: TPU node {node.name} was preempted")
    return await respond(sim.random, done, stream=body.stream)


async def list_models(request: Request) -> Response:
    sim = sim_of(request)
    sim.tick()
    node = _find(sim, request.path_params["zone"], request.path_params["node_id"])
    if node is None or node.state != "READY":
        return openai_error(503, "TPU node is not serving", "ServiceUnavailable")
    model = (node.body.labels or {}).get("model", node.spec.name)  # a ``model`` label names what it serves
    return google_json({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "tpu"}]})


routes = [
    Route("/node/{zone}/{node_id}/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/node/{zone}/{node_id}/v1/models", list_models, methods=["GET"]),
]
