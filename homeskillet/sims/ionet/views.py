"""How io.net renders deployments: the documented ``DeploymentDetails`` fields, per product."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from homeskillet.sims.ionet.catalog import PriceBreakdown
from homeskillet.sims.ionet.state import Deployment, IonetSim

__all__ = ["caas_details", "containers", "iso", "price_data", "summary", "vm_details"]


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat()


def _common(dep: Deployment, sim: IonetSim) -> dict[str, Any]:
    end = dep.finished_at if dep.finished_at is not None else sim.now()
    served = max(0.0, min(end, dep.ends_at) - dep.created_at)
    started = dep.phase != "failed" and min(end, dep.ends_at) >= dep.ready_at
    return {
        "id": dep.id,
        "status": dep.status,
        "created_at": iso(dep.created_at),
        "started_at": iso(dep.ready_at) if started else None,
        "finished_at": iso(dep.finished_at),
        "amount_paid": dep.amount_paid,
        "completed_percent": round(100 * served / (dep.hours * 3600), 2),
        "total_gpus": dep.units * dep.gpus_per_unit,
        "hardware_name": dep.hardware.hardware_name,
        "hardware_id": dep.hardware.hardware_id,
        "locations": [{"id": loc.id, "iso2": loc.iso2, "name": loc.name}
                      for loc in map(sim.location, dep.placement)],
        "brand_name": dep.hardware.brand_name,
        "compute_minutes_served": int(served // 60),
        "compute_minutes_remaining": int(max(0.0, dep.ends_at - end) // 60) if dep.active else 0,
    }


def caas_details(dep: Deployment, sim: IonetSim) -> dict[str, Any]:
    spec = dep.spec
    return {
        **_common(dep, sim),
        "gpus_per_container": dep.gpus_per_unit,
        "total_containers": dep.units,
        "container_config": {
            "entrypoint": spec.get("entrypoint"),
            "env_variables": spec.get("env_variables"),
            "traffic_port": spec["traffic_port"],
            "image_url": spec["image_url"],
            "secret_env_keys": sorted(spec.get("secret_env_variables") or {}),  # values never echoed
        },
    }


def vm_details(dep: Deployment, sim: IonetSim) -> dict[str, Any]:
    return {
        **_common(dep, sim),
        "gpus_per_vm": dep.gpus_per_unit,
        "total_vms": dep.units,
        "ssh_keys": dep.spec.get("ssh_keys", {}),
        "github_ids": dep.spec.get("github_ids") or [],
    }


def summary(dep: Deployment, sim: IonetSim) -> dict[str, Any]:
    """One row of ``GET …/caas/deployments`` (shape as seen by public clients; unverified)."""
    full = _common(dep, sim)
    keep = ("id", "status", "completed_percent", "brand_name", "hardware_name", "compute_minutes_served",
            "compute_minutes_remaining", "created_at")
    return {"name": dep.name, "hardware_quantity": full["total_gpus"], **{k: full[k] for k in keep}}


def containers(dep: Deployment, sim: IonetSim, base_url: str) -> dict[str, Any]:
    """``GET …/caas/deployment/{id}/containers``: one worker per replica, each with its public URL.

    In reality ``public_url`` is the container's own host; here it points back into this app
    (``/deployment/{id}``), so ``POST {public_url}/v1/chat/completions`` reaches the simulator.
    """
    url = f"{base_url.rstrip('/')}/deployment/{dep.id}" if dep.phase == "running" else None
    ns = uuid.UUID(dep.id)
    workers = [
        {
            "container_id": str(uuid.uuid5(ns, f"container-{i}")),
            "device_id": str(uuid.uuid5(ns, f"device-{i}")),
            "status": dep.status,
            "hardware": dep.hardware.hardware_name,
            "brand_name": dep.hardware.brand_name,
            "created_at": iso(dep.created_at),
            "uptime_percent": 100 if dep.phase == "running" else 0,
            "gpus_per_container": dep.gpus_per_unit,
            "container_events": [{"time": iso(dep.created_at), "message": "deployment requested"}]
            + ([{"time": iso(dep.ready_at), "message": "container started"}] if url else []),
            "public_url": url,
        }
        for i in range(dep.units)
    ]
    return {"data": {"total": len(workers), "workers": workers}}


def price_data(quote: PriceBreakdown, unit_field: str) -> dict[str, Any]:
    """The documented price fields; ``unit_field`` is ``gpus_per_vm`` or ``gpus_per_container``."""
    return {"data": {
        "replica_count": quote.replica_count,
        unit_field: quote.gpus_per_unit,
        "available_replica_count": quote.available_replica_count,
        "discount": quote.discount,
        "ionet_fee": quote.ionet_fee,
        "ionet_fee_percent": quote.ionet_fee_percent,
        "currency_conversion_fee": quote.currency_conversion_fee,
        "currency_conversion_fee_percent": quote.currency_conversion_fee_percent,
        "total_cost_usdc": quote.total_cost_usdc,
    }}
