"""The RunPod simulator's world: GPU stock, pods, the clock and the bill.

Time comes from ``RunPodState.clock`` (tests call ``state.clock.advance(s)``): a pod's ``runtime``
stays null until ``created + boot_s + slow_ready_s``. Billing is lazy and per second: GPUs at
price-per-GPU * gpuCount while the pod is RUNNING (image pull included), disk at $0.10/GB/month
while running and the volume at $0.20/GB/month while EXITED, RunPod's published storage rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from homeskillet.sims.base import SimConfig, SimRandom
from homeskillet.sims.common import Clock, SimClock, as_clock
from homeskillet.sims.runpod.catalog import (
    DataCenter,
    GpuType,
    default_data_centers,
    default_gpu_types,
    default_stock,
)

__all__ = ["NO_STOCK", "Clock", "DeploySpec", "Pod", "RunPodError", "RunPodState", "SimClock"]

NO_STOCK = ("There are no longer any instances available with the requested specifications. "
            "Please refresh and try again.")
NO_GPUS_ON_HOST = "There are not enough free GPUs on the host machine to start this pod."
_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"


class RunPodError(Exception):
    """A refusal: GraphQL turns it into ``errors[]`` (HTTP 200), REST into ``{"error", "status"}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class DeploySpec(msgspec.Struct, kw_only=True):
    """What both the GraphQL mutations and ``POST /v1/pods`` ask for, in one shape."""

    image: str
    gpu_type_ids: list[str]
    name: str = ""
    gpu_count: int = 1
    cloud: str = "ALL"  # ALL | SECURE | COMMUNITY
    data_center_ids: list[str] | None = None
    country_codes: list[str] | None = None
    by_availability: bool = True  # gpuTypePriority/dataCenterPriority "availability", else "custom"
    container_disk_gb: int = 10
    volume_gb: int = 0
    volume_mount_path: str = "/workspace"
    ports: list[str] = []
    env: dict[str, str] = {}
    docker_args: str = ""
    interruptible: bool = False
    bid_per_gpu: float | None = None  # None on a spot pod: bid the current floor (REST v1 has no bid)


class Pod(msgspec.Struct, kw_only=True):
    id: str
    spec: DeploySpec
    gpu: GpuType
    dc: DataCenter
    price_per_gpu: float  # the bid for a spot pod
    machine_id: str
    host_suffix: str
    public_ip: str
    public_ports: dict[int, int]  # private tcp port -> public port
    created_at: float
    ready_at: float
    desired: str = "RUNNING"  # RUNNING | EXITED (TERMINATED pods are removed)
    status_note: str = "Rented by User"
    changed_at: float = 0.0
    cost_usd: float = 0.0
    last_billed: float = 0.0

    @property
    def cost_per_hr(self) -> float:
        return round(self.price_per_gpu * self.spec.gpu_count, 4)


class RunPodState:
    """One simulated RunPod account, reachable as ``app.state.sim``."""

    def __init__(self, config: SimConfig, clock: Clock | Callable[[], float] | None = None) -> None:
        extra = config.extra
        self.config = config
        self.rnd = SimRandom(config)
        self.clock: Clock = (SimClock(config.time_scale, extra.get("epoch")) if clock is None
                             else as_clock(clock))
        self.boot_s = float(extra.get("boot_s", 0.0))  # image pull before faults.slow_ready_s
        self.gpu_types = {g.id: g for g in default_gpu_types()}
        self.data_centers = {d.id: d for d in default_data_centers()}
        self.stock = default_stock(config.seed, [*self.gpu_types.values()], [*self.data_centers.values()])
        for gpu_id, per_dc in dict(extra.get("stock", {})).items():  # {"NVIDIA L40S": {"EU-RO-1": 0}}
            self.stock.update({(gpu_id, dc_id): int(n) for dc_id, n in dict(per_dc).items()})
        self.spot_bump: dict[str, float] = {}  # per GPU type: how far preemptions raised the floor
        self.pods: dict[str, Pod] = {}
        self.settled_usd = 0.0
        self.counters: dict[str, int] = {}

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def gpu_type(self, gpu_id: str) -> GpuType:
        gpu = self.gpu_types.get(gpu_id)
        if gpu is None:
            raise RunPodError(f'No GPU type with id "{gpu_id}"; query gpuTypes for valid ids.')
        return gpu

    def min_bid(self, gpu: GpuType, secure: bool) -> float:
        return round(gpu.price(secure, spot=True) + self.spot_bump.get(gpu.id, 0.0), 4)

    def locations(self, secure: bool | None, dc_ids: list[str] | None, countries: list[str] | None,
                  ) -> list[DataCenter]:
        return [dc for dc in self.data_centers.values()
                if (secure is None or dc.secure == secure) and (not dc_ids or dc.id in dc_ids)
                and (not countries or dc.country_code in countries)]

    # -- billing --------------------------------------------------------------------------------
    def _settle(self, pod: Pod) -> None:
        now = self.clock.now()
        hours = max(0.0, now - pod.last_billed) / 3600.0
        if pod.desired == "RUNNING":
            rate = pod.cost_per_hr + (pod.spec.container_disk_gb + pod.spec.volume_gb) * 0.10 / 720
        else:
            rate = pod.spec.volume_gb * 0.20 / 720
        pod.cost_usd += hours * rate
        pod.last_billed = now

    def total_cost(self) -> float:
        for pod in self.pods.values():
            self._settle(pod)
        return self.settled_usd + sum(p.cost_usd for p in self.pods.values())

    # -- lifecycle ------------------------------------------------------------------------------
    def deploy(self, spec: DeploySpec) -> Pod:
        """Place a pod; refuses with RunPod's stock-out message, or half-creates an EXITED pod."""
        faults, rng = self.config.faults, self.rnd.rng
        gpus = [self.gpu_type(g) for g in spec.gpu_type_ids]
        if not spec.image:
            raise RunPodError("imageName is required.")
        if not gpus or not all(1 <= spec.gpu_count <= g.max_gpu_count for g in gpus):
            raise RunPodError(f"gpuCount must be between 1 and 8, got {spec.gpu_count}.")
        secure = {"SECURE": True, "COMMUNITY": False}.get(spec.cloud)
        places = self.locations(secure, spec.data_center_ids, spec.country_codes)
        if spec.data_center_ids and not spec.by_availability:
            places.sort(key=lambda d: spec.data_center_ids.index(d.id) if spec.data_center_ids else 0)
        options = [(g, dc) for g in gpus for dc in places
                   if self.stock.get((g.id, dc.id), 0) >= spec.gpu_count]
        if spec.by_availability:
            options.sort(key=lambda o: -self.stock[(o[0].id, o[1].id)])
        live = sum(1 for p in self.pods.values() if p.desired == "RUNNING")
        if not options or live >= self.config.capacity or self.rnd.chance(faults.refuse_rate):
            self.count("stock_out")
            raise RunPodError(NO_STOCK)
        gpu, dc = options[0]
        floor = self.min_bid(gpu, dc.secure)
        if spec.interruptible and spec.bid_per_gpu is not None and spec.bid_per_gpu < floor:
            raise RunPodError(f"Your bid of ${spec.bid_per_gpu:.3f}/GPU/hr is below the current minimum "
                              f"bid of ${floor:.3f}/GPU/hr for {gpu.id}.")
        if self.rnd.chance(faults.stale_offer_rate):
            self.stock[(gpu.id, dc.id)] = 0  # the stockStatus the client saw has flipped
            self.count("stale")
            raise RunPodError(NO_STOCK)
        now = self.clock.now()
        pod_id = "".join(rng.choice(_ALNUM) for _ in range(14))
        tcp = [int(p.split("/")[0]) for p in spec.ports if p.endswith("/tcp") and p.split("/")[0].isdigit()]
        price = (spec.bid_per_gpu or floor) if spec.interruptible else gpu.price(dc.secure, spot=False)
        pod = Pod(
            id=pod_id, spec=spec, gpu=gpu, dc=dc, created_at=now, last_billed=now, changed_at=now,
            price_per_gpu=price, machine_id="".join(rng.choice(_ALNUM) for _ in range(12)),
            host_suffix=f"{rng.getrandbits(32):08x}", public_ip=f"194.68.245.{rng.randrange(2, 254)}",
            public_ports={p: rng.randrange(10_000, 50_000) for p in tcp},
            ready_at=now + self.boot_s + faults.slow_ready_s,
        )
        self.pods[pod_id] = pod
        if self.rnd.chance(faults.half_created_rate):
            pod.desired, pod.status_note = "EXITED", "Exited by RunPod: start failed"
            self.count("half_created")
            raise RunPodError(NO_STOCK)  # the caller sees a refusal, the account still has the pod
        self.stock[(gpu.id, dc.id)] -= spec.gpu_count
        self.count("created")
        return pod

    def get(self, pod_id: str) -> Pod:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise RunPodError(f'Pod "{pod_id}" not found.', status=404)
        return pod

    def _release(self, pod: Pod, desired: str, note: str) -> None:
        self._settle(pod)
        if pod.desired == "RUNNING":
            slot = (pod.gpu.id, pod.dc.id)
            self.stock[slot] = self.stock.get(slot, 0) + pod.spec.gpu_count
        pod.desired, pod.status_note, pod.changed_at = desired, note, self.clock.now()

    def stop(self, pod_id: str) -> Pod:
        pod = self.get(pod_id)
        self._release(pod, "EXITED", "Exited by User")
        return pod

    def preempt(self, pod_id: str) -> Pod:
        """A higher bid took the GPUs: a spot pod goes EXITED and the floor rises past its bid."""
        pod = self.get(pod_id)
        if not pod.spec.interruptible:
            raise RunPodError(f'Pod "{pod_id}" is on-demand and cannot be preempted.')
        self._release(pod, "EXITED", "Exited by RunPod: spot instance outbid")
        self.spot_bump[pod.gpu.id] = max(self.spot_bump.get(pod.gpu.id, 0.0),
                                         pod.price_per_gpu - pod.gpu.price(pod.dc.secure, spot=True) + 0.01)
        self.count("preempted")
        return pod

    def resume(self, pod_id: str, gpu_count: int | None = None, bid_per_gpu: float | None = None) -> Pod:
        pod = self.get(pod_id)
        if pod.desired == "RUNNING":
            return pod
        count = gpu_count or pod.spec.gpu_count
        if self.stock.get((pod.gpu.id, pod.dc.id), 0) < count or not 1 <= count <= pod.gpu.max_gpu_count:
            raise RunPodError(NO_GPUS_ON_HOST)
        if pod.spec.interruptible:
            bid = bid_per_gpu if bid_per_gpu is not None else pod.price_per_gpu
            if bid < self.min_bid(pod.gpu, pod.dc.secure):
                raise RunPodError(f"Your bid of ${bid:.3f}/GPU/hr is below the current minimum bid of "
                                  f"${self.min_bid(pod.gpu, pod.dc.secure):.3f}/GPU/hr for {pod.gpu.id}.")
            pod.price_per_gpu = bid
        self._settle(pod)
        self.stock[(pod.gpu.id, pod.dc.id)] -= count
        pod.spec.gpu_count = count
        pod.desired, pod.status_note, pod.changed_at = "RUNNING", "Rented by User", self.clock.now()
        pod.ready_at = self.clock.now() + self.boot_s + self.config.faults.slow_ready_s
        return pod

    def terminate(self, pod_id: str) -> None:
        pod = self.get(pod_id)
        self._release(pod, "TERMINATED", "Terminated by User")
        self.settled_usd += pod.cost_usd
        del self.pods[pod_id]
        self.count("terminated")

    def is_up(self, pod: Pod | None) -> bool:
        return pod is not None and pod.desired == "RUNNING" and self.clock.now() >= pod.ready_at

    def uptime(self, pod: Pod) -> int:
        return int(self.clock.now() - pod.ready_at) if self.is_up(pod) else 0

    def snapshot(self) -> dict[str, Any]:
        return {"now": self.clock.now(), "pods": len(self.pods), "billed_usd": self.total_cost(),
                "counters": dict(self.counters)}
