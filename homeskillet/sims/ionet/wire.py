"""io.net request bodies (``provider-apis.md`` §3).

io.net's API models forbid extra fields, so every Struct here does too: a nested ``container_config``
on PATCH is a 422 ``extra_forbidden``, as the docs warn.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = [
    "DeployRequest",
    "ExtendRequest",
    "UpdateRequest",
    "VmDeployRequest",
]

Positive = Annotated[int, msgspec.Meta(ge=1)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65_535)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Hours = Annotated[int, msgspec.Meta(ge=1)]  # upper bound checked against IonetKnobs.max_duration_hours


class _Body(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class DeployRequest(_Body):
    """``POST /enterprise/v1/io-cloud/caas/deploy``: flat fields, as the current API expects."""

    resource_private_name: Name
    duration_hours: Hours
    gpus_per_container: Positive
    hardware_id: int
    location_ids: Annotated[list[int], msgspec.Meta(min_length=1)]
    replica_count: Positive
    image_url: Annotated[str, msgspec.Meta(min_length=1)]
    traffic_port: Port
    entrypoint: list[str] | None = None
    args: list[str] | None = None
    env_variables: dict[str, str] | None = None
    secret_env_variables: dict[str, str] | None = None
    registry_username: str | None = None
    registry_secret: str | None = None


class UpdateRequest(_Body):
    """``PATCH …/caas/deployment/{id}``: container fields only; hardware, locations, replicas are fixed."""

    image_url: Annotated[str, msgspec.Meta(min_length=1)] | None = None
    entrypoint: list[str] | None = None
    args: list[str] | None = None
    traffic_port: Port | None = None
    env_variables: dict[str, str] | None = None
    secret_env_variables: dict[str, str] | None = None
    registry_username: str | None = None
    registry_secret: str | None = None


class ExtendRequest(_Body):
    duration_hours: Hours


class VmDeployRequest(_Body):
    """``POST /enterprise/v1/io-cloud/vmaas/deploy``; ``location_ids`` are ids or ISO codes (["US"])."""

    resource_private_name: Name
    duration_hours: Hours
    gpus_per_vm: Positive
    hardware_id: int
    location_ids: Annotated[list[int | str], msgspec.Meta(min_length=1)]
    ssh_keys: dict[str, str]
    github_ids: list[str] | None = None
