"""Vast.ai's wire, pure: the offer search in its filter language, the rent body, the instance as
``GET /instances/{id}/`` shows it, and Vast's error envelope mapped onto our errors.

Units in: ``gpu_ram`` MB per GPU, ``total_flops`` TFLOPs for all GPUs, prices $/h for the whole
bundle, ``storage_cost`` $/GB/month, ``start_date``/``end_date`` epoch seconds. Units out: ours
(MB per GPU, USD per hour for the whole unit including the disk we rent).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ...errors import HomeskilletError, NoCapacity, ProviderAuthError, ProviderError, RateLimited
from ..base import AllocationRequest, ProviderOffer

__all__ = [
    "BID",
    "PROVIDER",
    "VAST_URL",
    "Envelope",
    "Phase",
    "RentBody",
    "VastInstance",
    "VastOffer",
    "error_for",
    "host_port",
    "offer_ref",
    "offers_from",
    "phase",
    "rent_body",
    "search_query",
]

PROVIDER = "vastai"
VAST_URL = "https://console.vast.ai/api/v0"
BID = ":bid"  # offer ids we list for the interruptible variant end with this
HOURS_PER_MONTH = 720.0  # Vast prices storage per 30-day month
OCI_MARKERS = ("OCI runtime create failed", "Error response from daemon")

Phase = Literal["starting", "running", "stopped", "failed", "gone"]


class VastOffer(msgspec.Struct, kw_only=True):
    """The fields of a search result we use; the rest are ignored."""

    id: int
    gpu_name: str = ""
    num_gpus: int = 1
    gpu_ram: float = 0.0  # MB per GPU
    total_flops: float | None = None  # TFLOPs, all GPUs
    dph_base: float = 0.0
    min_bid: float | None = None
    storage_cost: float = 0.0
    geolocation: str | None = None
    reliability2: float | None = None


class PortMap(msgspec.Struct):
    HostPort: str = ""


class VastInstance(msgspec.Struct, kw_only=True):
    id: int
    label: str | None = None
    actual_status: str | None = None
    cur_state: str | None = None
    intended_status: str | None = None
    next_state: str | None = None
    status_msg: str | None = None
    public_ipaddr: str | None = None
    ports: dict[str, list[PortMap]] | None = None
    dph_total: float = 0.0
    gpu_name: str = ""
    num_gpus: int = 1
    gpu_ram: float = 0.0
    gpu_util: float | None = None  # percent
    geolocation: str | None = None
    start_date: float | None = None
    end_date: float | None = None
    uptime_mins: float | None = None
    is_bid: bool | None = None


class Envelope(msgspec.Struct):
    """Vast's answers: ``{"success": false, "error": code, "msg": text}``; 429s say ``detail``."""

    success: bool | None = None
    error: str | None = None
    msg: str | None = None
    detail: str | None = None

    def text(self) -> str:
        return self.msg or self.detail or self.error or "no detail given"


def _country(geolocation: str | None) -> str:
    return (geolocation or "").rsplit(", ", 1)[-1]


def search_query(want: AllocationRequest, *, disk_gb: float, verified: bool, min_reliability: float,
                 limit: int) -> dict[str, Any]:
    """The ``POST /bundles/`` body for what ``want`` asks, cheapest first.

    An interruptible search (``type: "bid"``) prices ``dph_total`` at the minimum bid, so the
    ceiling applies to what we would pay; on-demand prices come from ``dph_base`` in the same rows.
    """
    q: dict[str, Any] = {
        "rentable": {"eq": True}, "rented": {"eq": False}, "external": {"eq": False},
        "num_gpus": {"eq": want.count}, "direct_port_count": {"gte": 1},
        "duration": {"gte": want.duration_s},
        "order": [["dph_total", "asc"]], "type": "bid" if want.preemptible else "on-demand",
        "limit": limit, "allocated_storage": disk_gb,
    }
    if verified:
        q["verified"] = {"eq": True}
    if want.gpu_model:
        q["gpu_name"] = {"in": [g.strip() for g in want.gpu_model.split(",") if g.strip()]}
    vram: dict[str, float] = {}
    if want.min_vram_mb:
        vram["gte"] = want.min_vram_mb
    if want.max_vram_mb:
        vram["lte"] = want.max_vram_mb
    if vram:
        q["gpu_ram"] = vram
    if want.min_tflops:
        q["total_flops"] = {"gte": want.min_tflops}
    if want.max_usd_per_hour:
        q["dph_total"] = {"lte": want.max_usd_per_hour}
    if want.region:
        q["geolocation"] = {"in": [r.strip() for r in want.region.split(",") if r.strip()]}
    if min_reliability:
        q["reliability2"] = {"gte": min_reliability}
    return q


def offers_from(rows: list[VastOffer], want: AllocationRequest, *, disk_gb: float) -> list[ProviderOffer]:
    """Each row as an on-demand offer, and (when ``want.preemptible``) an interruptible one at the
    bid we would place; rows over the price ceiling or under our bid's reach are left out."""
    out: list[ProviderOffer] = []
    for r in rows:
        disk = disk_gb * r.storage_cost / HOURS_PER_MONTH
        base = ProviderOffer(offer_id=str(r.id), gpu_model=r.gpu_name, count=r.num_gpus, vram_mb=int(r.gpu_ram),
                             tflops=r.total_flops or 0.0, region=_country(r.geolocation),
                             usd_per_hour=round(r.dph_base + disk, 6))
        variants = [base]
        if want.preemptible and r.min_bid is not None:
            bid = want.bid_usd_per_hour or r.min_bid
            if bid >= r.min_bid:
                variants.append(msgspec.structs.replace(base, offer_id=f"{r.id}{BID}", preemptible=True,
                                                        usd_per_hour=round(bid + disk, 6)))
        out.extend(v for v in variants if not want.max_usd_per_hour or v.usd_per_hour <= want.max_usd_per_hour)
    out.sort(key=lambda o: (o.usd_per_hour, o.offer_id))
    return out


def offer_ref(offer_id: str) -> tuple[int, bool]:
    """(ask id, interruptible) from one of our offer ids; a bad id is the caller's error."""
    ask, interruptible = (offer_id[: -len(BID)], True) if offer_id.endswith(BID) else (offer_id, False)
    if not ask.isdigit():
        raise ValueError(f"offer_id {offer_id!r} is not a Vast.ai offer id; use one from quote() "
                         f"(digits, optionally ending in {BID!r})")
    return int(ask), interruptible


class RentBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``PUT /asks/{id}/``: ``price`` null rents on demand, a number bids $/h (interruptible)."""

    image: str
    disk: float  # GB
    label: str
    env: dict[str, str]  # docker-style "-p 8000:8000" keys publish container ports
    price: float | None  # always sent: null is what makes it on-demand
    client_id: str
    runtype: str | None = None
    args: list[str] | None = None


def rent_body(*, image: str, disk_gb: float, label: str, port: int, args: list[str],
              price: float | None) -> RentBody:
    return RentBody(image=image, disk=disk_gb, label=label, env={f"-p {port}:{port}": "1"}, price=price,
                    client_id="me", runtype="args" if args else None, args=args or None)


def phase(inst: VastInstance | None) -> Phase:
    """Where an instance is: an outbid or half-created one has all three states ``stopped``."""
    if inst is None:
        return "gone"
    if "stopped" in (inst.intended_status, inst.cur_state) or inst.next_state == "stopped":
        return "stopped"
    msg = inst.status_msg or ""
    if any(m in msg for m in OCI_MARKERS) or inst.actual_status in ("exited", "offline"):
        return "failed"
    return "running" if inst.actual_status == "running" else "starting"


def host_port(inst: VastInstance, port: int) -> str | None:
    maps = (inst.ports or {}).get(f"{port}/tcp") or []
    return maps[0].HostPort if maps and maps[0].HostPort else None


def error_for(status: int, env: Envelope, *, retry_after_s: float | None = None) -> HomeskilletError:
    """Vast's refusal as our error; a ``success: false`` body counts even under HTTP 200."""
    text = env.text()
    if status in (401, 403) or env.error == "auth_error":
        return ProviderAuthError(f"credential refused ({status}): {text}; check the pool's api key",
                                 provider=PROVIDER, http_status=status)
    if status == 429:
        return RateLimited(f"rate limited: {text}", provider=PROVIDER, retry_after_s=retry_after_s)
    if env.error in ("no_such_ask", "not_available") or "not available" in text:
        return NoCapacity(f"the offer is gone: {text}", provider=PROVIDER, http_status=status)
    return ProviderError(f"HTTP {status} {env.error or ''}: {text}".replace("  ", " "), provider=PROVIDER,
                         http_status=status)
