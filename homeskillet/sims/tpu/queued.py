"""Queued resources: ask for TPUs, wait in line for capacity, get nodes when it frees.

States follow Google: ACCEPTED → WAITING_FOR_RESOURCES (no chips, or a ``refuse_rate`` draw) →
PROVISIONING (chips held, nodes CREATING) → ACTIVE (nodes READY). Waiting requests are offered the
free chips in arrival order after every event, so "delete a node, a queued TPU goes ACTIVE"
happens by clock (a smaller request may fit where an older, larger one does not).
``queueingPolicy`` validAfter/validUntil bound the wait (FAILED past the end).
A spot node's preemption, or deleting a node, SUSPENDS its queued resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import msgspec

from homeskillet.sims.tpu.catalog import AcceleratorSpec
from homeskillet.sims.tpu.errors import GoogleError, invalid
from homeskillet.sims.tpu.lifecycle import EMPTY, delete_node, new_node, remove_node, validate_node
from homeskillet.sims.tpu.render import prune, rfc3339
from homeskillet.sims.tpu.state import Node, Operation, TpuSim
from homeskillet.sims.tpu.wire import NodeBody, QueuedResourceBody, SchedulingConfig

__all__ = ["Queue", "QueuedResource"]

QR_TYPE = "type.googleapis.com/google.cloud.tpu.v2.QueuedResource"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _seconds(value: str, field_: str) -> float:
    if not (m := _DURATION.match(value)):
        raise invalid(field_, f"Invalid duration {value!r}: expected seconds such as \"3600s\"")
    return float(m[1])


def _instant(value: str, field_: str) -> float:
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        raise invalid(field_, f"Invalid timestamp {value!r}: expected RFC 3339") from None


@dataclass
class QueuedResource:
    project: str
    zone: str
    qr_id: str
    raw: dict[str, Any]  # the request body as sent, echoed back
    nodes: list[tuple[str, NodeBody, AcceleratorSpec]]  # (node id, body, spec) per nodeSpec
    created_at: float
    valid_after: float
    valid_until: float | None
    spot: bool
    state: str = "ACCEPTED"
    initiator: str = "USER"
    error: dict[str, Any] | None = None
    node_names: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.zone}/queuedResources/{self.qr_id}"

    def json(self, *, typed: bool = False) -> dict[str, Any]:
        state: dict[str, Any] = {"state": self.state, "stateInitiator": self.initiator}
        if self.error is not None:
            state["failedData"] = {"error": self.error}
        out = {"@type": QR_TYPE if typed else None, "name": self.name, "createTime": rfc3339(self.created_at),
               **self.raw, "state": state}
        return prune(out)  # type: ignore[no-any-return]


class Queue:
    """The queued-resource half of the TPU simulator; hooks itself into ``TpuSim``'s events."""

    def __init__(self, sim: TpuSim) -> None:
        self.sim = sim
        self.items: dict[str, QueuedResource] = {}
        sim.after_event.append(self.admit)
        sim.on_node_lost.append(self._node_lost)

    def get(self, project: str, zone: str, qr_id: str) -> QueuedResource:
        name = f"projects/{project}/locations/{zone}/queuedResources/{qr_id}"
        if (qr := self.items.get(name)) is None:
            raise GoogleError("NOT_FOUND", f"Resource '{name}' was not found")
        return qr

    def create(self, project: str, zone: str, qr_id: str | None, body: QueuedResourceBody,
               raw: dict[str, Any]) -> Operation:
        sim, parent = self.sim, f"projects/{project}/locations/{zone}"
        if not qr_id or not re.match(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$", qr_id):
            raise invalid("queued_resource_id", f"Invalid queued resource ID {qr_id!r}")
        if f"{parent}/queuedResources/{qr_id}" in self.items:
            raise GoogleError("ALREADY_EXISTS", f"Resource '{parent}/queuedResources/{qr_id}' already exists")
        if body.tpu is None or not body.tpu.node_spec:
            raise invalid("queued_resource.tpu.node_spec", "At least one node_spec is required")
        nodes: list[tuple[str, NodeBody, AcceleratorSpec]] = []
        for i, ns in enumerate(body.tpu.node_spec):
            where = f"queued_resource.tpu.node_spec[{i}]"
            if ns.parent != parent:
                raise invalid(f"{where}.parent", f"parent must be {parent!r}, got {ns.parent!r}")
            if ns.node_id in {n for n, _, _ in nodes}:
                raise invalid(f"{where}.node_id", f"Duplicate node_id {ns.node_id!r}")
            nodes.append((ns.node_id or "", ns.node, validate_node(sim, project, zone, ns.node_id, ns.node,
                                                                   f"{where}.node")))
        policy, now = body.queueing_policy, sim.now()
        after, until = now, None
        if policy is not None:
            if policy.valid_after_duration:
                after = now + _seconds(policy.valid_after_duration, "queueing_policy.valid_after_duration")
            if policy.valid_after_time:
                after = _instant(policy.valid_after_time, "queueing_policy.valid_after_time")
            if policy.valid_until_duration:
                until = now + _seconds(policy.valid_until_duration, "queueing_policy.valid_until_duration")
            if policy.valid_until_time:
                until = _instant(policy.valid_until_time, "queueing_policy.valid_until_time")
        qr = QueuedResource(project, zone, qr_id, raw, nodes, now, after, until, spot=body.spot is not None)
        self.items[qr.name] = qr
        op = sim.new_operation(project, zone, "create", qr.name)
        sim.at(now, lambda at: sim.finish(op, at, response=qr.json(typed=True)))
        if after > now:
            sim.at(after, lambda at: None)  # wakes admission when the window opens
        if until is not None:
            sim.at(until, lambda at: self._expire(qr, at))
        return op

    def admit(self, at: float) -> None:
        """Give waiting requests, oldest first, the chips that are free at ``at``."""
        for qr in list(self.items.values()):
            if qr.state in ("ACCEPTED", "WAITING_FOR_RESOURCES") and at >= qr.valid_after:
                self._try_provision(qr, at)

    def _try_provision(self, qr: QueuedResource, at: float) -> None:
        sim, need = self.sim, dict[str, int]()
        for _, _, spec in qr.nodes:
            need[spec.family] = need.get(spec.family, 0) + spec.chips
        short = any(sim.free_chips(qr.zone, family) < chips for family, chips in need.items())
        if short or sim.random.chance(sim.config.faults.refuse_rate):
            qr.state, qr.initiator = "WAITING_FOR_RESOURCES", "SERVICE"
            return
        parent = f"projects/{qr.project}/locations/{qr.zone}/nodes"
        if taken := [n for n, _, _ in qr.nodes if f"{parent}/{n}" in sim.nodes]:
            qr.state, qr.initiator = "FAILED", "SERVICE"
            qr.error = {"code": 6, "message": f"Nodes {taken} already exist"}
            return
        qr.state, qr.initiator = "PROVISIONING", "SERVICE"
        created: list[Node] = []
        for node_id, body, spec in qr.nodes:
            if qr.spot:  # the spot tier makes spot nodes, whatever the node spec says
                body = msgspec.structs.replace(body, scheduling_config=SchedulingConfig(spot=True))
            node = new_node(sim, qr.project, qr.zone, node_id, body, spec, queued_resource=qr.name)
            sim.hold(node)
            created.append(node)
        qr.node_names = [n.name for n in created]

        def active(when: float) -> None:
            if qr.state != "PROVISIONING":
                return
            for node in created:
                if node.state == "CREATING":
                    node.state = "READY"
                    sim.start_billing(node, when)
            qr.state = "ACTIVE"

        sim.at(at + sim.knobs.create_s + sim.config.faults.slow_ready_s, active)

    def _expire(self, qr: QueuedResource, at: float) -> None:
        if qr.state in ("ACCEPTED", "WAITING_FOR_RESOURCES"):
            qr.state, qr.initiator = "FAILED", "SERVICE"
            qr.error = {"code": 4, "message": "The queued resource was not provisioned before its "
                                              "queueing policy's valid-until time."}

    def _node_lost(self, node: Node, at: float, by: str) -> None:
        qr = self.items.get(node.queued_resource or "")
        if qr is not None and qr.state in ("PROVISIONING", "ACTIVE"):
            qr.state, qr.initiator = "SUSPENDED", by

    def delete(self, qr: QueuedResource, *, force: bool) -> Operation:
        sim = self.sim
        live = [sim.nodes[n] for n in qr.node_names if n in sim.nodes]
        if live and not force:
            raise GoogleError("FAILED_PRECONDITION", f"Queued resource {qr.name} is {qr.state} and has "
                              "nodes; delete them first or set force=true")
        op = sim.new_operation(qr.project, qr.zone, "delete", qr.name)
        qr.state, qr.initiator = "DELETING", "USER"
        for node in live:
            if node.state != "DELETING":
                delete_node(sim, node)

        def gone(at: float) -> None:
            for node in live:
                remove_node(sim, node, at)
            self.items.pop(qr.name, None)
            sim.finish(op, at, response=EMPTY)

        sim.at(sim.now() + sim.knobs.op_s, gone)
        return op

    def reset(self, qr: QueuedResource) -> Operation:
        """``:reset``: a SUSPENDED request drops what is left of its nodes and queues again."""
        sim = self.sim
        if qr.state != "SUSPENDED":
            raise GoogleError("FAILED_PRECONDITION", f"Queued resource {qr.name} is {qr.state}; "
                              "only SUSPENDED queued resources can be reset")
        now = sim.now()
        for name in qr.node_names:
            if name in sim.nodes:
                remove_node(sim, sim.nodes[name], now)
        qr.node_names, qr.state, qr.initiator = [], "ACCEPTED", "USER"
        op = sim.new_operation(qr.project, qr.zone, "reset", qr.name)
        sim.finish(op, now, response=qr.json(typed=True))
        sim.settle(now)
        return op

