"""io.net's REST API, the pure half: response Structs, the FastAPI error envelope mapped to our
errors, prepaid prices in our units and the refund rule (``provider-apis.md`` §3).

io.net sells whole prepaid hours: a price is a total for ``duration_hours`` with io.net's fee and
a currency-conversion fee included, so ``usd_per_hour = total_cost_usdc / duration_hours``. On
destroy "the first hour is always non-refundable"; after that the unused share is refunded pro rata.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from ...errors import NoCapacity
from ..http import raise_for_status

__all__ = [
    "CAAS",
    "VMAAS",
    "ContainersPage",
    "DeployAnswer",
    "Deployment",
    "DeploymentsPage",
    "HardwareRow",
    "PriceData",
    "ReplicaRow",
    "billed_on_destroy",
    "decode",
    "envelope_message",
    "our_status",
    "raise_ionet",
    "seconds_between",
]

CAAS = "/enterprise/v1/io-cloud/caas"
VMAAS = "/enterprise/v1/io-cloud/vmaas"

# CaaS statuses (documented enum) and the VMaaS ones; anything else is treated as "not yet running".
RUNNING = frozenset({"running", "active"})
ENDED = frozenset({"completed", "destroyed", "termination requested"})
FAILED = frozenset({"failed"})


class HardwareRow(msgspec.Struct):
    """One row of ``GET …/vmaas/hardware``: a hardware type in one location, for ``num_cards`` GPUs."""

    deploy_id: int  # the ``hardware_id`` the CaaS endpoints take
    name: str
    vram_per_card: int = 0  # GB
    num_cards: int = 1
    location: str = ""  # ISO code
    sold_out: bool = False


class ReplicaRow(msgspec.Struct):
    """One location of ``GET …/caas/available-replicas``."""

    id: int
    iso2: str = ""
    name: str = ""
    available_replicas: int = 0


class PriceData(msgspec.Struct):
    """``GET …/caas/price``: the prepaid total for the asked hours, fees included (USDC = USD)."""

    total_cost_usdc: float
    replica_count: int = 1
    available_replica_count: list[int] = []
    discount: float = 0.0
    ionet_fee: float = 0.0
    ionet_fee_percent: float = 0.0
    currency_conversion_fee: float = 0.0
    currency_conversion_fee_percent: float = 0.0


class DeployAnswer(msgspec.Struct):
    deployment_id: str
    status: str = ""


class Location(msgspec.Struct):
    id: int
    iso2: str = ""
    name: str = ""


class Deployment(msgspec.Struct):
    """``GET …/caas/deployment/{id}`` ``data``: the documented ``DeploymentDetails`` fields we use."""

    id: str
    status: str
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    amount_paid: float = 0.0
    hardware_name: str = ""
    hardware_id: int = 0
    locations: list[Location] = []
    compute_minutes_served: int = 0
    compute_minutes_remaining: int = 0
    total_gpus: int = 0


class Worker(msgspec.Struct):
    container_id: str = ""
    status: str = ""
    public_url: str | None = None


class ContainersPage(msgspec.Struct):
    workers: list[Worker] = []


class DeploymentRow(msgspec.Struct):
    id: str
    status: str = ""
    name: str = ""


class DeploymentsPage(msgspec.Struct):
    deployments: list[DeploymentRow] = []
    total: int = 0


class _Data(msgspec.Struct):
    data: Any = None


def decode(raw: bytes, type_: type[Any], *, wrapped: bool = True) -> Any:
    """Decode an io.net answer (``{"data": …}`` when ``wrapped``) into ``type_``."""
    if not wrapped:
        return msgspec.json.decode(raw, type=type_)
    return msgspec.convert(msgspec.json.decode(raw, type=_Data).data, type_)


# -- errors ------------------------------------------------------------------------------------

_CAPACITY = re.compile(r"not enough|no available|sold out|insufficient|no capacity|out of stock", re.I)


class _Problem(msgspec.Struct):
    loc: list[str | int] = []
    msg: str = ""


class _Envelope(msgspec.Struct):
    detail: str | list[_Problem] | None = None


def envelope_message(raw: bytes) -> str:
    """FastAPI's ``{"detail": "..."}`` as is; a 422 ``detail[]`` as ``field.path: message`` pairs."""
    try:
        detail = msgspec.json.decode(raw, type=_Envelope).detail
    except msgspec.DecodeError:
        return raw[:200].decode("utf-8", "replace").strip() or "no body"
    if isinstance(detail, list):
        parts = [f"{'.'.join(str(p) for p in item.loc) or 'request'}: {item.msg}" for item in detail]
        return "invalid request: " + "; ".join(parts) if parts else "invalid request"
    return detail or "no detail"


def raise_ionet(status: int, raw: bytes, *, retry_after_s: float | None = None) -> None:
    """Raise our error for a failed io.net call: "not enough replicas" is ``NoCapacity``."""
    message = envelope_message(raw)
    capacity = status in (400, 409, 503) and bool(_CAPACITY.search(message))
    if status == 422:
        message += " (a pool option or request value io.net does not accept)"
    raise_for_status("ionet", status, message, retry_after_s=retry_after_s, capacity=capacity)


def no_capacity(message: str) -> NoCapacity:
    return NoCapacity(message, provider="ionet")


# -- money and status --------------------------------------------------------------------------


def billed_on_destroy(amount_paid: float, hours: int, used_s: float) -> float:
    """What io.net keeps when a deployment prepaid for ``hours`` is destroyed after ``used_s``:
    at least the first hour, then pro rata, never more than was paid."""
    if hours <= 0:
        return amount_paid
    used_h = min(float(hours), max(1.0, used_s / 3600.0))
    return round(amount_paid * used_h / hours, 6)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one io.net ISO timestamp to another (both the provider's clock)."""
    if not start or not end:
        return None
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def our_status(status: str) -> str:
    if status in RUNNING:
        return "running"
    if status in FAILED:
        return "failed"
    if status in ENDED:
        return "released"
    return "pending"
