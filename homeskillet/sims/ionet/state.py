"""What the io.net simulator remembers: GPU stock per location, deployments, and the money.

A deployment (CaaS containers or VMaaS VMs) is prepaid for whole hours. It holds its GPUs from
deploy until it expires or is destroyed. On destroy the unused prepaid time is refunded pro rata,
except the first hour, which io.net never refunds. Every charge and refund is a ``LedgerEntry``.
Status moves by the injected clock: ``refresh()`` runs at the start of every request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from homeskillet.sims.base import SimConfig, SimRandom
from homeskillet.sims.ionet.catalog import Hardware, IonetKnobs, Location, PriceBreakdown, quote
from homeskillet.sims.ionet.clock import Clock
from homeskillet.sims.ionet.envelope import ApiError

__all__ = ["Deployment", "IonetSim", "LedgerEntry", "Phase"]

Phase = Literal["starting", "running", "completed", "failed", "destroyed"]
Kind = Literal["caas", "vmaas"]

# io.net's status strings. CaaS values are the documented CaaSResourceStatus enum; VMaaS documents
# only "active" (extend response), the rest are unverified.
STATUS: dict[Kind, dict[Phase, str]] = {
    "caas": {"starting": "deployment requested", "running": "running", "completed": "completed",
             "failed": "failed", "destroyed": "destroyed"},
    "vmaas": {"starting": "deploying", "running": "active", "completed": "completed",
              "failed": "failed", "destroyed": "destroyed"},
}


@dataclass
class Deployment:
    id: str
    kind: Kind
    name: str
    hardware: Hardware
    gpus_per_unit: int  # GPUs per container (CaaS) or per VM (VMaaS)
    placement: dict[int, int]  # location id -> replicas holding GPUs there
    hours: int  # prepaid hours, including extensions
    amount_paid: float  # USD(C), including extensions
    created_at: float
    ready_at: float
    spec: dict[str, Any]  # the container definition (CaaS) or ssh keys (VMaaS) as last sent
    phase: Phase = "starting"
    finished_at: float | None = None
    refund_usd: float = 0.0

    @property
    def ends_at(self) -> float:
        return self.created_at + self.hours * 3600

    @property
    def units(self) -> int:
        return sum(self.placement.values())

    @property
    def status(self) -> str:
        return STATUS[self.kind][self.phase]

    @property
    def active(self) -> bool:
        return self.phase in ("starting", "running")


@dataclass(frozen=True)
class LedgerEntry:
    at: float
    deployment_id: str
    kind: Literal["charge", "refund"]
    usd: float
    note: str


@dataclass
class IonetSim:
    config: SimConfig
    knobs: IonetKnobs
    clock: Clock
    random: SimRandom = field(init=False)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)
    free_gpus: dict[tuple[int, int], int] = field(default_factory=dict)  # (hardware, location) -> GPUs

    def __post_init__(self) -> None:
        self.random = SimRandom(self.config)
        for hw in self.knobs.hardware:
            stock = hw.gpus_per_location if hw.gpus_per_location is not None else 8 * self.config.capacity
            for loc in hw.location_ids:
                self.free_gpus[hw.hardware_id, loc] = stock

    # -- lookups ------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.random.rng.getrandbits(128), version=4))

    def hardware(self, hardware_id: int) -> Hardware:
        for hw in self.knobs.hardware:
            if hw.hardware_id == hardware_id:
                return hw
        raise ApiError(404, f"Hardware with id {hardware_id} not found")

    def location(self, key: int | str) -> Location:
        for loc in self.knobs.locations:
            if key in (loc.id, loc.iso2):
                return loc
        raise ApiError(404, f"Location {key!r} not found")

    def deployment(self, deployment_id: str, kind: Kind) -> Deployment:
        dep = self.deployments.get(deployment_id)
        if dep is None or dep.kind != kind:
            raise ApiError(404, f"Deployment {deployment_id} not found")
        return dep

    def available(self, hw: Hardware, gpus_per_unit: int) -> dict[int, int]:
        """Replicas of ``gpus_per_unit`` GPUs deployable now, per location of ``hw``."""
        return {loc: self.free_gpus[hw.hardware_id, loc] // gpus_per_unit for loc in hw.location_ids}

    def price(self, hw: Hardware, location_ids: list[int], gpus: int, replicas: int,
              hours: int) -> PriceBreakdown:
        for loc in location_ids:
            if loc not in hw.location_ids:
                raise ApiError(400, f"Hardware {hw.hardware_id} is not offered in location {loc}")
        if gpus > hw.max_gpus_per_container:
            raise ApiError(400, f"{hw.hardware_name} allows at most {hw.max_gpus_per_container} GPUs "
                                f"per container, got {gpus}")
        if hours > self.knobs.max_duration_hours:
            raise ApiError(400, f"duration_hours must be at most {self.knobs.max_duration_hours}")
        free = self.available(hw, gpus)
        return quote(self.knobs, hw, gpus, replicas, hours, [free[loc] for loc in location_ids])

    # -- lifecycle ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Apply what the clock says has happened: started deployments run, prepaid time runs out."""
        now = self.now()
        for dep in self.deployments.values():
            if dep.phase == "starting" and now >= dep.ready_at:
                dep.phase = "running"
            if dep.active and now >= dep.ends_at:
                self._finish(dep, "completed", dep.ends_at)

    def deploy(self, kind: Kind, name: str, hw: Hardware, location_ids: list[int], gpus: int,
               replicas: int, hours: int, spec: dict[str, Any]) -> Deployment:
        if any(d.active and d.name == name for d in self.deployments.values()):
            raise ApiError(400, f"resource_private_name {name!r} is already in use")
        quote_ = self.price(hw, location_ids, gpus, replicas, hours)
        faults = self.config.faults
        # A stale offer or a refusal looks the same to the caller: the replicas are gone.
        gone = self.random.chance(faults.stale_offer_rate) or self.random.chance(faults.refuse_rate)
        placement: dict[int, int] = {}
        wanted = replicas
        for loc, free in zip(location_ids, quote_.available_replica_count, strict=True):
            take = min(wanted, free)
            if take:
                placement[loc] = placement.get(loc, 0) + take
                wanted -= take
        if gone or wanted:
            have = 0 if gone else replicas - wanted
            raise ApiError(400, f"Not enough available replicas for hardware {hw.hardware_id} in locations "
                                f"{location_ids}: requested {replicas}, available {have}")
        now = self.now()
        dep = Deployment(id=self.new_id(), kind=kind, name=name, hardware=hw, gpus_per_unit=gpus,
                         placement=placement, hours=hours, amount_paid=quote_.total_cost_usdc,
                         created_at=now, ready_at=now + self.knobs.ready_s + faults.slow_ready_s,
                         spec=spec)
        self.deployments[dep.id] = dep
        self.ledger.append(LedgerEntry(now, dep.id, "charge", dep.amount_paid, f"prepaid {hours} h"))
        if self.random.chance(faults.half_created_rate):
            # Half-created: the caller gets an error, yet the deployment exists, failed, and is paid for.
            dep.phase, dep.finished_at = "failed", now
            raise ApiError(503, "Deployment could not be started, please try again later")
        for loc, n in placement.items():
            self.free_gpus[hw.hardware_id, loc] -= n * gpus
        return dep

    def extend(self, dep: Deployment, hours: int) -> float:
        if not dep.active:
            raise ApiError(400, f"Deployment {dep.id} is {dep.status} and cannot be extended")
        if dep.hours + hours > self.knobs.max_duration_hours:
            raise ApiError(400, f"duration_hours must be at most {self.knobs.max_duration_hours} in total")
        cost = quote(self.knobs, dep.hardware, dep.gpus_per_unit, dep.units, hours, []).total_cost_usdc
        dep.hours += hours
        dep.amount_paid = round(dep.amount_paid + cost, 6)
        self.ledger.append(LedgerEntry(self.now(), dep.id, "charge", cost, f"extend {hours} h"))
        return cost

    def destroy(self, dep: Deployment) -> float:
        """Stop now; refund the unused prepaid share, never the first hour. Returns the refund."""
        if dep.phase in ("completed", "destroyed"):
            raise ApiError(400, f"Deployment {dep.id} is already {dep.status}")
        now = self.now()
        used_h = max(1.0, (now - dep.created_at) / 3600)
        refund = round(dep.amount_paid * max(0.0, dep.hours - used_h) / dep.hours, 6)
        self._finish(dep, "destroyed", now)
        dep.refund_usd = refund
        if refund:
            note = f"unused {dep.hours - used_h:.3f} h"
            self.ledger.append(LedgerEntry(now, dep.id, "refund", refund, note))
        return refund

    def _finish(self, dep: Deployment, phase: Phase, at: float) -> None:
        if dep.phase != "failed":  # a half-created deployment never held GPUs
            for loc, n in dep.placement.items():
                self.free_gpus[dep.hardware.hardware_id, loc] += n * dep.gpus_per_unit
        dep.phase, dep.finished_at = phase, at

    def spent_usd(self, deployment_id: str | None = None) -> float:
        """Net money paid (charges minus refunds), for one deployment or all."""
        return round(sum((e.usd if e.kind == "charge" else -e.usd) for e in self.ledger
                         if deployment_id in (None, e.deployment_id)), 6)
