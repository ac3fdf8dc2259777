"""Google's JSON for Nodes and Operations, proto3-style.

Proto3 JSON leaves out fields at their default: ``false``, ``null``, ``""`` and empty lists never
appear. So a pending Operation has no ``done`` key at all, and listing zero nodes returns ``{}``.
Connectors must read ``op.get("done", False)`` and ``body.get("nodes", [])``; the simulator keeps
this quirk on purpose. (Empty objects stay: ``"spot": {}`` means "spot tier chosen".)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from homeskillet.sims.tpu.state import Node, Operation

__all__ = ["node_json", "operation_json", "prune", "rfc3339"]

NODE_TYPE = "type.googleapis.com/google.cloud.tpu.v2.Node"
META_TYPE = "type.googleapis.com/google.cloud.tpu.v2.OperationMetadata"
SERVING = ("READY", "STOPPING")  # states in which the node has hosts, so network endpoints


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def prune(value: Any) -> Any:
    """Drop proto3 default values recursively (``None``, ``False``, ``""``, ``[]``)."""
    if isinstance(value, dict):
        pruned = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v is not None and v is not False and v != "" and v != []}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def node_json(node: Node, *, typed: bool = True) -> dict[str, Any]:
    """The ``Node`` resource; ``typed`` adds ``@type`` as inside an Operation response."""
    body = msgspec.to_builtins(node.body)
    region = node.zone.rsplit("-", 1)[0]
    network = body.get("networkConfig") or {}
    network["network"] = network.get("network") or f"projects/{node.project}/global/networks/default"
    network["subnetwork"] = (network.get("subnetwork")
                             or f"projects/{node.project}/regions/{region}/subnetworks/default")
    out: dict[str, Any] = {
        "@type": NODE_TYPE if typed else None,
        "name": node.name,
        "description": body.get("description"),
        "acceleratorType": node.spec.name,
        "state": node.state,
        "runtimeVersion": body.get("runtimeVersion"),
        "networkConfig": network,
        "cidrBlock": body.get("cidrBlock") or "10.128.0.0/20",
        "serviceAccount": body.get("serviceAccount") or {
            "email": "default", "scope": ["https://www.googleapis.com/auth/cloud-platform"]},
        "createTime": rfc3339(node.created_at),
        "schedulingConfig": body.get("schedulingConfig"),
        "networkEndpoints": node.endpoints if node.state in SERVING else [],
        "health": "HEALTHY" if node.state == "READY" else None,
        "labels": body.get("labels") or None,
        "metadata": body.get("metadata") or None,
        "tags": body.get("tags"),
        "id": node.numeric_id,
        "dataDisks": body.get("dataDisks"),
        "apiVersion": "V2",
        "symptoms": [],
        "shieldedInstanceConfig": body.get("shieldedInstanceConfig"),
        "acceleratorConfig": {"type": node.spec.config_type, "topology": node.spec.topology},
        "queuedResource": node.queued_resource,
    }
    return prune(out)  # type: ignore[no-any-return]


def operation_json(op: Operation) -> dict[str, Any]:
    metadata = {
        "@type": META_TYPE,
        "createTime": rfc3339(op.created_at),
        "endTime": rfc3339(op.done_at) if op.done_at is not None else None,
        "target": op.target,
        "verb": op.verb,
        "cancelRequested": op.cancel_requested,
        "apiVersion": "v2",
    }
    out = {"name": op.name, "metadata": metadata, "done": op.done, "error": op.error, "response": op.response}
    return prune(out)  # type: ignore[no-any-return]
