"""Cloud TPU v2 request bodies (``Node``, ``QueuedResource``), camelCase on the wire.

Google's JSON transcoder rejects unknown field names, so these Structs forbid them; output-only
fields a client may echo back (``state``, ``name``…) are accepted and ignored, as Google does.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AcceleratorConfig",
    "NodeBody",
    "NodeSpec",
    "QueuedResourceBody",
    "QueueingPolicy",
    "SchedulingConfig",
    "TpuSpec",
]


class _Msg(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class SchedulingConfig(_Msg):
    preemptible: bool = False
    reserved: bool = False
    spot: bool = False


class AcceleratorConfig(_Msg):
    type: str
    topology: str


class NetworkConfig(_Msg):
    network: str | None = None
    subnetwork: str | None = None
    enable_external_ips: bool = False
    can_ip_forward: bool = False
    queue_count: int | None = None


class ServiceAccount(_Msg):
    email: str | None = None
    scope: list[str] | None = None


class AttachedDisk(_Msg):
    source_disk: str | None = None
    mode: str | None = None


class ShieldedInstanceConfig(_Msg):
    enable_secure_boot: bool = False


class NodeBody(_Msg):
    accelerator_type: str | None = None
    accelerator_config: AcceleratorConfig | None = None
    runtime_version: str | None = None
    description: str | None = None
    network_config: NetworkConfig | None = None
    network_configs: list[NetworkConfig] | None = None
    cidr_block: str | None = None
    service_account: ServiceAccount | None = None
    scheduling_config: SchedulingConfig | None = None
    data_disks: list[AttachedDisk] | None = None
    labels: dict[str, str] | None = None
    metadata: dict[str, str] | None = None
    tags: list[str] | None = None
    shielded_instance_config: ShieldedInstanceConfig | None = None
    # Output only: accepted and ignored.
    name: Any = None
    id: Any = None
    state: Any = None
    health: Any = None
    health_description: Any = None
    network_endpoints: Any = None
    create_time: Any = None
    api_version: Any = None
    symptoms: Any = None
    queued_resource: Any = None
    multislice_node: Any = None

    @property
    def spot(self) -> bool:
        sc = self.scheduling_config
        return bool(sc and (sc.spot or sc.preemptible))


class NodeSpec(_Msg):
    parent: str
    node: NodeBody
    node_id: str | None = None
    multislice_params: dict[str, Any] | None = None


class TpuSpec(_Msg):
    node_spec: list[NodeSpec]


class QueueingPolicy(_Msg):
    """Durations are Google ``Duration`` strings ("3600s"); times are RFC 3339."""

    valid_until_duration: str | None = None
    valid_until_time: str | None = None
    valid_after_duration: str | None = None
    valid_after_time: str | None = None
    valid_interval: dict[str, str] | None = None


class Guaranteed(_Msg):
    min_duration: str | None = None
    reserved: bool = False


class QueuedResourceBody(_Msg):
    tpu: TpuSpec | None = None
    spot: dict[str, Any] | None = None
    guaranteed: Guaranteed | None = None
    best_effort: dict[str, Any] | None = None
    queueing_policy: QueueingPolicy | None = None
    reservation_name: str | None = None
    # Output only: accepted and ignored.
    name: Any = None
    create_time: Any = None
    state: Any = None
