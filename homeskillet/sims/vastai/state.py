"""The Vast.ai simulator's world: offers, rented instances, the clock and the bill.

Everything time-dependent (readiness, uptime, billing) reads ``VastState.clock``, so tests move
time with ``state.clock.advance(s)`` instead of sleeping. Billing is lazy: each instance accrues
``rate * elapsed`` up to "now" whenever it is touched; GPU time is billed while the instance is
meant to run (loading included, as on Vast), storage from creation until it is destroyed, so a
stopped or half-created instance keeps costing money until someone destroys it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from homeskillet.sims.base import SimConfig, SimRandom
from homeskillet.sims.common import DEFAULT_EPOCH, Clock, SimClock, as_clock
from homeskillet.sims.vastai.market import HOURS_PER_MONTH, Offer, default_offers

__all__ = ["DEFAULT_EPOCH", "Clock", "Instance", "SimClock", "VastError", "VastState"]

OCI_ERROR = ("Error response from daemon: failed to create task for container: failed to create shim task: "
             "OCI runtime create failed: runc create failed: unable to start container process: "
             "exec: \"vllm\": executable file not found in $PATH: unknown")


class VastError(Exception):
    """A refusal in Vast's envelope: ``{"success": false, "error": code, "msg": msg}``."""

    def __init__(self, status: int, error: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.error, self.msg = status, error, msg


class Instance(msgspec.Struct, kw_only=True):
    id: int
    offer: Offer
    image: str
    label: str | None = None
    env: dict[str, Any] = {}
    onstart: str | None = None
    disk: float = 10.0
    bid: float | None = None  # $/h; set means interruptible
    created_at: float
    ready_at: float | None  # None: never becomes ready (OCI error)
    intended: str = "running"
    stop_reason: str | None = None  # "user" | "outbid" | "half_created"
    host_ports: dict[str, str] = {}
    cost_usd: float = 0.0
    last_billed: float = 0.0

    @property
    def gpu_rate(self) -> float:
        return self.bid if self.bid is not None else self.offer.dph_base

    @property
    def storage_rate(self) -> float:
        return self.disk * self.offer.storage_cost / HOURS_PER_MONTH


class VastState:
    """One simulated Vast account and market, reachable as ``app.state.sim``."""

    def __init__(self, config: SimConfig, clock: Clock | Callable[[], float] | None = None) -> None:
        extra = config.extra
        self.config = config
        self.rnd = SimRandom(config)
        self.clock: Clock = (SimClock(config.time_scale, extra.get("epoch")) if clock is None
                             else as_clock(clock))
        self.boot_s = float(extra.get("boot_s", 0.0))  # image pull + start, before slow_ready_s
        self.oci_error_rate = float(extra.get("oci_error_rate", 0.0))
        if "offers" in extra:
            self.offers = msgspec.convert(extra["offers"], list[Offer])
        else:
            self.offers = default_offers(config.seed, int(extra.get("offer_count", 20)), self.clock.now())
        self.instances: dict[int, Instance] = {}
        self.settled_usd = 0.0  # cost of destroyed instances
        self.counters: dict[str, int] = {}
        self._next_id = 10_000_000 + self.rnd.rng.randrange(9_000_000)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # -- billing --------------------------------------------------------------------------------
    def _settle(self, inst: Instance) -> None:
        now = self.clock.now()
        hours = max(0.0, now - inst.last_billed) / 3600.0
        gpu = inst.gpu_rate if inst.intended == "running" else 0.0
        inst.cost_usd += hours * (gpu + inst.storage_rate)
        inst.last_billed = now

    def total_cost(self) -> float:
        for inst in self.instances.values():
            self._settle(inst)
        return self.settled_usd + sum(i.cost_usd for i in self.instances.values())

    # -- lifecycle ------------------------------------------------------------------------------
    def offer(self, offer_id: int) -> Offer:
        for offer in self.offers:
            if offer.id == offer_id and offer.rentable and not offer.rented:
                return offer
        raise VastError(404, "no_such_ask", f"Instance type by id {offer_id} is not available.")

    def create(self, offer_id: int, image: str, *, price: float | None, disk: float, label: str | None,
               env: dict[str, Any], onstart: str | None) -> int:
        """Rent an offer; may refuse, find it gone, or leave a stopped (half-created) instance."""
        faults = self.config.faults
        if price is not None and price <= 0:
            raise VastError(400, "invalid_args", f"price must be a positive $/h bid, got {price}")
        offer = self.offer(offer_id)
        live = sum(1 for i in self.instances.values() if i.intended == "running")
        if live >= self.config.capacity or self.rnd.chance(faults.refuse_rate):
            self.count("refused")
            raise VastError(404, "no_such_ask", f"Instance type by id {offer_id} is not available.")
        if self.rnd.chance(faults.stale_offer_rate):
            self.offers.remove(offer)  # someone else rented it between search and create
            self.count("stale")
            raise VastError(404, "no_such_ask", f"Instance type by id {offer_id} is not available.")
        now = self.clock.now()
        low_bid = price is not None and price < offer.min_bid
        half = low_bid or self.rnd.chance(faults.half_created_rate)
        oci = not half and self.rnd.chance(self.oci_error_rate)
        ports = {"22/tcp": str(self.rnd.rng.randrange(20_000, 65_000))}
        for key in env:  # docker-style "-p 8000:8000" keys expose container ports
            if key.startswith("-p ") and ":" in key:
                port = key.rsplit(":", 1)[1].split("/")[0]
                ports[f"{port}/tcp"] = str(self.rnd.rng.randrange(20_000, 65_000))
        inst = Instance(
            id=self._next_id, offer=offer, image=image, label=label, env=env, onstart=onstart, disk=disk,
            bid=price, created_at=now, last_billed=now, host_ports=ports,
            ready_at=None if oci else now + self.boot_s + faults.slow_ready_s,
            intended="stopped" if half else "running", stop_reason="half_created" if half else None,
        )
        self._next_id += 1
        offer.rented, offer.rentable = True, False
        self.instances[inst.id] = inst
        self.count("half_created" if half else "created")
        return inst.id

    def get(self, instance_id: int) -> Instance:
        inst = self.instances.get(instance_id)
        if inst is None:
            raise VastError(404, "no_such_instance", f"Instance {instance_id} does not exist.")
        return inst

    def destroy(self, instance_id: int) -> None:
        inst = self.get(instance_id)
        self._settle(inst)
        self.settled_usd += inst.cost_usd
        inst.offer.rented, inst.offer.rentable = False, True
        del self.instances[instance_id]
        self.count("destroyed")

    def set_state(self, instance_id: int, state: str) -> None:
        inst = self.get(instance_id)
        self._settle(inst)
        if state == "stopped":
            inst.intended, inst.stop_reason = "stopped", "user"
            return
        if inst.bid is not None and inst.bid < inst.offer.min_bid:
            raise VastError(400, "invalid_args",
                            f"Bid ${inst.bid:.4f}/h is below the minimum ${inst.offer.min_bid:.4f}/h; "
                            f"raise it with PUT /instances/bid_price/{inst.id}/.")
        if inst.intended != "running":
            inst.intended, inst.stop_reason = "running", None
            if inst.ready_at is not None:
                inst.ready_at = self.clock.now() + self.boot_s + self.config.faults.slow_ready_s

    def set_bid(self, instance_id: int, price: float) -> None:
        inst = self.get(instance_id)
        if inst.bid is None:
            raise VastError(400, "invalid_args", f"Instance {instance_id} is on-demand; it has no bid.")
        if price <= 0:
            raise VastError(400, "invalid_args", f"price must be a positive $/h bid, got {price}")
        self._settle(inst)
        inst.bid = price
        if inst.stop_reason in ("outbid", "half_created") and price >= inst.offer.min_bid:
            self.set_state(instance_id, "running")  # a winning bid restarts the instance

    def outbid(self, instance_id: int) -> None:
        """Someone bid more: the instance stops (all three states "stopped") and min_bid rises past us."""
        inst = self.get(instance_id)
        self._settle(inst)
        inst.intended, inst.stop_reason = "stopped", "outbid"
        if inst.bid is not None:
            inst.offer.min_bid = round(max(inst.offer.min_bid, inst.bid * 1.1 + 0.01), 4)
        self.count("outbid")

    def serving(self, instance_id: int) -> Instance | None:
        inst = self.instances.get(instance_id)
        if inst is None or inst.intended != "running" or inst.ready_at is None:
            return None
        return inst if self.clock.now() >= inst.ready_at else None

    def show(self, inst: Instance) -> dict[str, Any]:
        """The instance as ``GET /instances/{id}/`` returns it."""
        self._settle(inst)
        now, offer = self.clock.now(), inst.offer
        up = self.serving(inst.id) is not None
        if inst.intended == "running":
            actual = "running" if up else "created"
            msg = OCI_ERROR if inst.ready_at is None else ("success, running" if up else "Pulling image")
        else:
            actual = "created" if inst.stop_reason == "half_created" else "exited"
            low = inst.bid is not None and inst.bid < offer.min_bid
            msg = {"outbid": "Instance stopped: outbid by a higher bidder.",
                   "half_created": f"Bid ${inst.bid}/h is below min_bid ${offer.min_bid}/h; not started."
                   if low else "Create failed; the instance was left stopped.",
                   }.get(inst.stop_reason or "", "Instance stopped.")
        ready_at = inst.ready_at if up and inst.ready_at is not None else now
        return {
            "id": inst.id, "machine_id": offer.machine_id, "host_id": offer.host_id, "label": inst.label,
            "image_uuid": inst.image, "onstart": inst.onstart, "actual_status": actual,
            "cur_state": inst.intended, "intended_status": inst.intended, "next_state": inst.intended,
            "status_msg": msg, "public_ipaddr": offer.public_ipaddr,
            "ports": {p: [{"HostIp": "0.0.0.0", "HostPort": h}] for p, h in inst.host_ports.items()}
            if up else {},
            "ssh_host": f"ssh{offer.machine_id % 9 + 1}.vast.ai", "ssh_port": int(inst.host_ports["22/tcp"]),
            "dph_base": offer.dph_base, "dph_total": round(inst.gpu_rate + inst.storage_rate, 6),
            "storage_cost": offer.storage_cost, "disk_space": inst.disk, "is_bid": inst.bid is not None,
            "min_bid": offer.min_bid, "gpu_name": offer.gpu_name, "num_gpus": offer.num_gpus,
            "gpu_ram": offer.gpu_ram, "gpu_totalram": offer.gpu_ram * offer.num_gpus,
            "gpu_util": 0.0 if not up else 35.0, "total_flops": offer.total_flops, "cpu_ram": offer.cpu_ram,
            "start_date": inst.created_at, "end_date": offer.end_date, "duration": offer.duration,
            "extra_env": [[k, str(v)] for k, v in inst.env.items()], "reliability2": offer.reliability2,
            "uptime_mins": round((now - ready_at) / 60.0, 2), "driver_version": offer.driver_version,
            "cuda_max_good": offer.cuda_max_good, "geolocation": offer.geolocation,
            "inet_up": offer.inet_up, "inet_down": offer.inet_down,
        }
