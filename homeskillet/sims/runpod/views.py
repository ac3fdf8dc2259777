"""RunPod's wire shapes: GraphQL inputs and objects, REST v1 bodies and Pod objects.

Inputs are msgspec Structs with camelCase wire names (``rename="camel"``), decoded from the
GraphQL ``input`` argument or the REST body, then turned into one ``DeploySpec``. Unknown input
keys are ignored (a real GraphQL server rejects them; our inputs model a subset).
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

import msgspec

from homeskillet.sims.runpod.catalog import GpuType
from homeskillet.sims.runpod.state import DeploySpec, Pod, RunPodState

__all__ = ["GqlDeployInput", "LowestPriceInput", "PodIdInput", "RestPodBody", "lowest_price", "pod_graphql",
           "pod_rest"]

Count = Annotated[int, msgspec.Meta(ge=1, le=64)]
Disk = Annotated[int, msgspec.Meta(ge=0, le=100_000)]
Bid = Annotated[float, msgspec.Meta(gt=0, le=1000)]


class EnvVar(msgspec.Struct):
    key: str
    value: str


class GqlDeployInput(msgspec.Struct, kw_only=True, rename="camel"):
    """``PodFindAndDeployOnDemandInput`` / ``PodRentInterruptableInput``."""

    image_name: str
    gpu_type_id: str
    name: str = ""
    gpu_count: Count = 1
    cloud_type: Literal["ALL", "SECURE", "COMMUNITY"] = "ALL"
    data_center_id: str | None = None
    country_code: str | None = None
    container_disk_in_gb: Disk = 10
    volume_in_gb: Disk = 0
    volume_mount_path: str = "/workspace"
    ports: str | None = None  # "8000/http,22/tcp"
    env: list[EnvVar] | None = None
    docker_args: str = ""
    bid_per_gpu: Bid | None = None

    def spec(self, interruptible: bool) -> DeploySpec:
        return DeploySpec(
            image=self.image_name, gpu_type_ids=[self.gpu_type_id], name=self.name, gpu_count=self.gpu_count,
            cloud=self.cloud_type, data_center_ids=[self.data_center_id] if self.data_center_id else None,
            country_codes=[self.country_code] if self.country_code else None,
            container_disk_gb=self.container_disk_in_gb, volume_gb=self.volume_in_gb,
            volume_mount_path=self.volume_mount_path,
            ports=[p.strip() for p in (self.ports or "").split(",") if p.strip()],
            env={e.key: e.value for e in self.env or []}, docker_args=self.docker_args,
            interruptible=interruptible, bid_per_gpu=self.bid_per_gpu,
        )


class PodIdInput(msgspec.Struct, kw_only=True, rename="camel"):
    pod_id: str
    gpu_count: Count | None = None
    bid_per_gpu: Bid | None = None


class LowestPriceInput(msgspec.Struct, kw_only=True, rename="camel"):
    gpu_count: Count = 1
    secure_cloud: bool | None = None
    data_center_id: str | None = None
    country_code: str | None = None


class RestPodBody(msgspec.Struct, kw_only=True, rename="camel"):
    """``POST /v1/pods``; the fields that change placement or price are honoured, the rest accepted."""

    image_name: str
    name: str = ""
    cloud_type: Literal["SECURE", "COMMUNITY"] = "SECURE"
    compute_type: Literal["GPU", "CPU"] = "GPU"
    gpu_type_ids: list[str] = []
    gpu_type_priority: Literal["availability", "custom"] = "availability"
    gpu_count: Count = 1
    data_center_ids: list[str] | None = None
    data_center_priority: Literal["availability", "custom"] = "availability"
    country_codes: list[str] | None = None
    interruptible: bool = False
    container_disk_in_gb: Disk = 50
    volume_in_gb: Disk = 20
    volume_mount_path: str = "/workspace"
    ports: list[str] = msgspec.field(default_factory=lambda: ["8888/http", "22/tcp"])
    env: dict[str, str] = {}
    min_ram_per_gpu: int = msgspec.field(default=8, name="minRAMPerGPU")  # system RAM, not VRAM
    min_vcpu_per_gpu: int = msgspec.field(default=2, name="minVCPUPerGPU")

    def spec(self) -> DeploySpec:
        return DeploySpec(
            image=self.image_name, gpu_type_ids=self.gpu_type_ids, name=self.name, gpu_count=self.gpu_count,
            cloud=self.cloud_type, data_center_ids=self.data_center_ids, country_codes=self.country_codes,
            by_availability="custom" not in (self.gpu_type_priority, self.data_center_priority),
            container_disk_gb=self.container_disk_in_gb, volume_gb=self.volume_in_gb,
            volume_mount_path=self.volume_mount_path, ports=self.ports, env=self.env,
            interruptible=self.interruptible,
        )


def lowest_price(state: RunPodState, gpu: GpuType, args: LowestPriceInput) -> dict[str, Any]:
    """``lowestPrice``: per-GPU prices where this many GPUs fit; ``stockStatus`` null when none do."""
    places = state.locations(args.secure_cloud, [args.data_center_id] if args.data_center_id else None,
                             [args.country_code] if args.country_code else None)
    free = sorted(((state.stock.get((gpu.id, dc.id), 0), dc) for dc in places), key=lambda x: -x[0])
    best, dc = free[0] if free else (0, None)
    secure = args.secure_cloud if args.secure_cloud is not None else bool(dc and dc.secure)
    ok = best >= args.gpu_count
    return {
        "gpuName": gpu.display_name, "gpuTypeId": gpu.id,
        "minimumBidPrice": state.min_bid(gpu, secure), "uninterruptablePrice": gpu.price(secure, spot=False),
        "minVcpu": 4 * args.gpu_count, "minMemory": 31 * args.gpu_count,
        "stockStatus": (("High" if best >= 8 else "Medium" if best >= 3 else "Low") if ok else None),
        "maxUnreservedGpuCount": best, "availableGpuCounts": [n for n in (1, 2, 4, 8) if n <= best],
        "compliance": [], "countryCode": dc.country_code if dc and ok else None,
    }


def _status_change(pod: Pod) -> str:
    fmt = "%a %b %d %Y %H:%M:%S GMT+0000 (Coordinated Universal Time)"
    stamp = time.strftime(fmt, time.gmtime(pod.changed_at))
    return f"{pod.status_note}: {stamp}"


def pod_graphql(state: RunPodState, pod: Pod) -> dict[str, Any]:
    """A ``Pod`` as GraphQL returns it; ``runtime`` is null until the container is up."""
    up, spec = state.is_up(pod), pod.spec
    runtime = None
    if up:
        ports = [{"ip": "100.65.0.2", "isIpPublic": False, "privatePort": int(p.split("/")[0]),
                  "publicPort": int(p.split("/")[0]), "type": "http"}
                 for p in spec.ports if p.endswith("/http") and p.split("/")[0].isdigit()]
        ports += [{"ip": pod.public_ip, "isIpPublic": True, "privatePort": priv, "publicPort": pub,
                   "type": "tcp"} for priv, pub in pod.public_ports.items()]
        runtime = {"uptimeInSeconds": state.uptime(pod), "ports": ports,
                   "gpus": [{"id": f"GPU-{pod.host_suffix}-{i}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                            for i in range(spec.gpu_count)],
                   "container": {"cpuPercent": 1, "memoryPercent": 2}}
    return {
        "__typename": "Pod", "id": pod.id, "name": spec.name, "imageName": spec.image,
        "env": [f"{k}={v}" for k, v in spec.env.items()], "machineId": pod.machine_id,
        "machine": {"podHostId": f"{pod.id}-{pod.host_suffix}", "gpuDisplayName": pod.gpu.display_name,
                    "gpuTypeId": pod.gpu.id, "location": pod.dc.country_code, "dataCenterId": pod.dc.id,
                    "secureCloud": pod.dc.secure},
        "desiredStatus": pod.desired, "costPerHr": pod.cost_per_hr, "adjustedCostPerHr": pod.cost_per_hr,
        "gpuCount": spec.gpu_count, "vcpuCount": 8 * spec.gpu_count, "memoryInGb": 62 * spec.gpu_count,
        "containerDiskInGb": spec.container_disk_gb, "volumeInGb": spec.volume_gb,
        "volumeMountPath": spec.volume_mount_path, "ports": ",".join(spec.ports),
        "dockerArgs": spec.docker_args,
        "podType": "INTERRUPTABLE" if spec.interruptible else "RESERVED",
        "bidPerGpu": pod.price_per_gpu if spec.interruptible else None, "locked": False,
        "lastStatusChange": _status_change(pod), "uptimeSeconds": state.uptime(pod), "runtime": runtime,
    }


def pod_rest(state: RunPodState, pod: Pod) -> dict[str, Any]:
    """A Pod object as REST v1 returns it."""
    up, spec, gpu = state.is_up(pod), pod.spec, pod.gpu
    return {
        "id": pod.id, "name": spec.name, "image": spec.image, "desiredStatus": pod.desired,
        "costPerHr": pod.cost_per_hr, "adjustedCostPerHr": pod.cost_per_hr,
        "interruptible": spec.interruptible,
        "gpu": {"id": gpu.id, "count": spec.gpu_count, "displayName": gpu.display_name,
                "securePrice": gpu.secure_price, "communityPrice": gpu.community_price,
                "secureSpotPrice": gpu.secure_spot_price, "communitySpotPrice": gpu.community_spot_price},
        "machine": {"gpuTypeId": gpu.id, "location": pod.dc.country_code, "dataCenterId": pod.dc.id,
                    "secureCloud": pod.dc.secure, "podHostId": f"{pod.id}-{pod.host_suffix}"},
        "machineId": pod.machine_id, "publicIp": pod.public_ip if up else None,
        "portMappings": {str(k): v for k, v in pod.public_ports.items()} if up else None,
        "ports": spec.ports, "env": spec.env, "locked": False, "containerDiskInGb": spec.container_disk_gb,
        "volumeInGb": spec.volume_gb, "volumeMountPath": spec.volume_mount_path,
        "vcpuCount": 8 * spec.gpu_count, "memoryInGb": 62 * spec.gpu_count,
        "lastStartedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(pod.ready_at)),
        "lastStatusChange": _status_change(pod), "networkVolumeId": None, "templateId": None,
    }
