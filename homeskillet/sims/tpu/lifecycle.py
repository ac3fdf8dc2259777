"""Node lifecycle: validate, create (→ Operation), delete, stop, start, by the simulator's clock.

A create decides its fate when it is accepted (so a seed fixes it): no free chips or a
``refuse_rate`` draw ends the Operation with RESOURCE_EXHAUSTED (gRPC code 8) after ``fail_s``;
a ``half_created_rate`` draw ends it with INTERNAL yet leaves a STOPPED node behind; otherwise
the node is READY after ``create_s + slow_ready_s``.
"""

from __future__ import annotations

import re
from typing import Any

from homeskillet.sims.tpu.catalog import ACCELERATORS, AcceleratorSpec, spec_for_config
from homeskillet.sims.tpu.errors import GoogleError, invalid
from homeskillet.sims.tpu.render import node_json
from homeskillet.sims.tpu.state import Node, Operation, TpuSim
from homeskillet.sims.tpu.wire import NodeBody

__all__ = ["create_node", "delete_node", "exhausted", "new_node", "start_node", "stop_node", "validate_node"]

_ID = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
EMPTY = {"@type": "type.googleapis.com/google.protobuf.Empty"}


def exhausted(sim: TpuSim, zone: str) -> GoogleError:
    return GoogleError("RESOURCE_EXHAUSTED", f'There is no more capacity in the zone "{zone}"; you can '
                       "try in another zone where Cloud TPU Nodes are offered (see "
                       f"https://cloud.google.com/tpu/docs/regions) [EID: 0x{sim.hex(16)}]")


def validate_node(sim: TpuSim, project: str, zone: str, node_id: str | None, body: NodeBody,
                  field: str = "node") -> AcceleratorSpec:
    """Everything Google rejects synchronously with 400/409 before it starts an Operation."""
    if not node_id or not _ID.match(node_id):
        raise invalid("node_id", f"Invalid node ID {node_id!r}: it must match [a-z]([-a-z0-9]*[a-z0-9])? "
                                 "and be at most 63 characters")
    name = f"projects/{project}/locations/{zone}/nodes/{node_id}"
    if name in sim.nodes:
        raise GoogleError("ALREADY_EXISTS", f"Resource '{name}' already exists")
    spec: AcceleratorSpec | None
    if body.accelerator_config is not None:
        spec = spec_for_config(body.accelerator_config.type, body.accelerator_config.topology)
        if spec is None or (body.accelerator_type not in (None, spec.name)):
            raise invalid(f"{field}.accelerator_config", "Unsupported or inconsistent accelerator config "
                          f"{body.accelerator_config.type}/{body.accelerator_config.topology}")
    elif body.accelerator_type is not None:
        spec = ACCELERATORS.get(body.accelerator_type)
        if spec is None:
            raise invalid(f"{field}.accelerator_type", f'Unknown accelerator type "{body.accelerator_type}"')
    else:
        raise invalid(f"{field}.accelerator_type",
                      "One of accelerator_type or accelerator_config is required")
    if spec.family not in sim.knobs.zones[zone]:
        raise invalid(f"{field}.accelerator_type",
                      f'Accelerator type "{spec.name}" is not available in zone "{zone}"')
    if not body.runtime_version:
        raise invalid(f"{field}.runtime_version", "Field 'runtime_version' is required")
    if body.runtime_version not in sim.knobs.runtime_versions:
        raise invalid(f"{field}.runtime_version", f'Unknown runtime version "{body.runtime_version}"')
    return spec


def new_node(sim: TpuSim, project: str, zone: str, node_id: str, body: NodeBody, spec: AcceleratorSpec,
             queued_resource: str | None = None) -> Node:
    external = body.network_config is not None and body.network_config.enable_external_ips
    rng = sim.random.rng
    endpoints: list[dict[str, Any]] = []
    for _ in range(spec.hosts):
        endpoint: dict[str, Any] = {"ipAddress": f"10.{rng.randrange(128, 256)}.{rng.randrange(256)}."
                                                 f"{rng.randrange(2, 255)}", "port": 8470}
        if external:
            endpoint["accessConfig"] = {"externalIp": f"34.{rng.randrange(256)}.{rng.randrange(256)}."
                                                      f"{rng.randrange(2, 255)}"}
        endpoints.append(endpoint)
    node = Node(project, zone, node_id, spec, body, str(rng.getrandbits(62)), sim.now(), endpoints,
                queued_resource=queued_resource)
    sim.nodes[node.name] = node
    return node


def remove_node(sim: TpuSim, node: Node, at: float, by: str = "USER") -> None:
    if sim.nodes.get(node.name) is not node:  # already gone (deleted twice, or replaced)
        return
    sim.release(node, at)
    sim.nodes.pop(node.name, None)
    for hook in sim.on_node_lost:
        hook(node, at, by)


def create_node(sim: TpuSim, project: str, zone: str, node_id: str | None, body: NodeBody) -> Operation:
    spec = validate_node(sim, project, zone, node_id, body)
    assert node_id is not None  # validate_node rejects a missing id
    node = new_node(sim, project, zone, node_id, body, spec)
    op = sim.new_operation(project, zone, "create", node.name)
    faults, now = sim.config.faults, sim.now()
    if sim.free_chips(zone, spec.family) < spec.chips or sim.random.chance(faults.refuse_rate):

        def refuse(at: float) -> None:
            if not op.done:
                remove_node(sim, node, at)
                sim.finish(op, at, error=exhausted(sim, zone))

        sim.at(now + sim.knobs.fail_s, refuse)
    else:
        sim.hold(node)
        half = sim.random.chance(faults.half_created_rate)

        def ready(at: float) -> None:
            if op.done:
                return
            if node.state != "CREATING":  # deleted while it was being created
                sim.finish(op, at, error=GoogleError("CANCELLED", "Node was deleted before it was created."))
                return
            if half:  # the Operation fails, the node stays behind, stopped
                sim.release(node, at)
                node.state = "STOPPED"
                sim.finish(op, at, error=GoogleError("INTERNAL", "An internal error has occurred."))
                return
            node.state = "READY"
            sim.start_billing(node, at)
            sim.finish(op, at, response=node_json(node))

        sim.at(now + sim.knobs.create_s + faults.slow_ready_s, ready)
    op.on_cancel = lambda at: remove_node(sim, node, at)
    return op


def delete_node(sim: TpuSim, node: Node, *, by: str = "USER") -> Operation:
    op = sim.new_operation(node.project, node.zone, "delete", node.name)
    node.state = "DELETING"
    sim.stop_billing(node, sim.now())

    def gone(at: float) -> None:
        remove_node(sim, node, at, by)
        sim.finish(op, at, response=EMPTY)

    sim.at(sim.now() + sim.knobs.op_s, gone)
    return op


def stop_node(sim: TpuSim, node: Node) -> Operation:
    if node.spec.hosts > 1:
        raise invalid("name", f"Stopping is only supported for single-host TPUs; {node.spec.name} has "
                              f"{node.spec.hosts} hosts")
    if node.state != "READY":
        raise GoogleError("FAILED_PRECONDITION",
                          f"Node {node.name} is {node.state}; only READY nodes can stop")
    op = sim.new_operation(node.project, node.zone, "stop", node.name)
    node.state = "STOPPING"
    sim.stop_billing(node, sim.now())  # billed while READY only, like delete

    def stopped(at: float) -> None:
        sim.release(node, at)
        node.state = "STOPPED"
        sim.finish(op, at, response=node_json(node))

    sim.at(sim.now() + sim.knobs.op_s, stopped)
    return op


def start_node(sim: TpuSim, node: Node) -> Operation:
    if node.state != "STOPPED":
        raise GoogleError("FAILED_PRECONDITION",
                          f"Node {node.name} is {node.state}; only STOPPED nodes can start")
    op = sim.new_operation(node.project, node.zone, "start", node.name)
    now = sim.now()
    if sim.free_chips(node.zone, node.spec.family) < node.spec.chips or sim.random.chance(
            sim.config.faults.refuse_rate):
        sim.at(now + sim.knobs.fail_s, lambda at: sim.finish(op, at, error=exhausted(sim, node.zone)))
        return op
    sim.hold(node)
    node.state = "STARTING"

    def started(at: float) -> None:
        if node.state == "STARTING":
            node.state = "READY"
            sim.start_billing(node, at)
            sim.finish(op, at, response=node_json(node))

    sim.at(now + sim.knobs.op_s + sim.config.faults.slow_ready_s, started)
    return op
