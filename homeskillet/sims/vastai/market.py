"""The Vast.ai offer market: seeded machines ("asks") and the bundles filter language.

Units are Vast's own: ``gpu_ram``/``cpu_ram`` in MB, ``total_flops`` in TFLOPs summed over the
bundle's GPUs, prices in $/h for the whole bundle, ``storage_cost`` in $/GB/month. The search
accepts operator maps (``{"gpu_ram": {"gte": 22000}}``) on any offer field. An unknown field or
operator is answered 400 ``invalid_args`` rather than silently ignored, so a misspelt filter in a
connector fails loudly instead of renting the wrong machine.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["DEFAULT_STORAGE_GB", "Offer", "SearchError", "default_offers", "priced", "search"]

DEFAULT_STORAGE_GB = 5.0  # vast-cli's default --storage; dph_total includes this much disk
HOURS_PER_MONTH = 720.0  # Vast prices storage per 30-day month


class SearchError(ValueError):
    """A malformed search query; the app answers it 400 ``invalid_args``."""


class Offer(msgspec.Struct, kw_only=True):
    """One rentable bundle as ``POST /bundles/`` lists it. Derived prices are filled by ``priced``."""

    id: int
    gpu_name: str
    num_gpus: int = 1
    gpu_ram: int = 24564  # MB per GPU
    dph_base: float = 0.40  # $/h for the whole bundle, without storage
    min_bid: float = 0.25  # $/h, the lowest winning interruptible bid right now
    storage_cost: float = 0.10  # $/GB/month
    machine_id: int = 10000
    host_id: int = 1000
    gpu_total_ram: int = 0
    gpu_frac: float = 1.0
    gpu_mem_bw: float = 1008.0  # GB/s
    bw_nvlink: float = 0.0
    compute_cap: int = 890
    total_flops: float = 82.6  # TFLOPs, all GPUs
    flops_per_dphtotal: float = 0.0
    cpu_cores: int = 32
    cpu_cores_effective: float = 32.0
    cpu_ram: int = 128907  # MB
    cpu_ghz: float = 3.5
    disk_space: float = 500.0  # GB
    disk_bw: float = 3000.0  # MB/s
    inet_up: float = 1000.0  # Mb/s
    inet_down: float = 1000.0
    inet_up_cost: float = 0.005  # $/GB
    inet_down_cost: float = 0.005
    dph_total: float = 0.0
    discounted_dph_total: float | None = None
    reliability: float = 0.98
    reliability2: float = 0.98
    score: float = 0.0
    dlperf: float = 60.0
    dlperf_per_dphtotal: float = 0.0
    cuda_max_good: float = 12.8
    driver_version: str = "570.86.10"
    geolocation: str = "Dallas, US"
    datacenter: bool = False
    hosting_type: int = 0  # 0 consumer host, 1 datacenter
    verification: str = "verified"
    verified: bool = True
    external: bool = False
    static_ip: bool = True
    direct_port_count: int = 100
    duration: float = 30 * 86400.0  # max rental seconds
    end_date: float | None = None
    public_ipaddr: str = "203.0.113.10"
    rentable: bool = True
    rented: bool = False


# name -> (MB per GPU, TFLOPs, GB/s, compute_cap, dlperf per GPU, $/h per GPU low..high)
_GPUS: dict[str, tuple[int, float, float, int, float, float, float]] = {
    "RTX 4090": (24564, 82.6, 1008.0, 890, 58.0, 0.28, 0.55),
    "RTX 3090": (24576, 35.6, 936.0, 860, 29.0, 0.12, 0.25),
    "A100 PCIE": (81920, 19.5, 1935.0, 800, 55.0, 0.75, 1.30),
    "H100 SXM": (81559, 66.9, 3350.0, 900, 120.0, 1.65, 2.80),
    "L40S": (46068, 91.6, 864.0, 890, 65.0, 0.65, 1.00),
}
_PLACES = ("Dallas, US", "San Jose, US", "Montreal, CA", "Frankfurt, DE", "Amsterdam, NL",
           "Stockholm, SE", "Tokyo, JP", "Sydney, AU", "PL")
_CUDA = ((12.2, "535.183.01"), (12.4, "550.120"), (12.6, "560.35.03"), (12.8, "570.86.10"))


def default_offers(seed: int, count: int = 20, epoch: float = 0.0) -> list[Offer]:
    """A seeded market: the same seed lists the same machines at the same prices."""
    rng = random.Random(f"vast-market-{seed}")
    names = list(_GPUS)
    offers: list[Offer] = []
    ids = rng.sample(range(4_000_000, 9_999_999), count)
    for i, ask_id in enumerate(ids):
        name = names[i % len(names)]
        ram, tflops, bw, cc, dlperf, low, high = _GPUS[name]
        n = rng.choice((1, 1, 1, 2, 4, 8) if name in ("H100 SXM", "A100 PCIE") else (1, 1, 1, 2, 4))
        dph = round(rng.uniform(low, high) * n, 4)
        cuda, driver = rng.choice(_CUDA)
        dc = rng.random() < 0.4
        cores = rng.choice((16, 32, 64, 128))
        duration = rng.uniform(3, 180) * 86400.0
        offers.append(Offer(
            id=ask_id, gpu_name=name, num_gpus=n, gpu_ram=ram, dph_base=dph,
            min_bid=round(dph * rng.uniform(0.45, 0.75), 4),
            storage_cost=rng.choice((0.05, 0.10, 0.15, 0.20)),
            machine_id=rng.randrange(10_000, 40_000), host_id=rng.randrange(1_000, 300_000),
            gpu_mem_bw=bw, bw_nvlink=(600.0 if cc >= 800 and n > 1 else 0.0), compute_cap=cc,
            total_flops=round(tflops * n, 2), cpu_cores=cores, cpu_cores_effective=float(cores),
            cpu_ram=rng.choice((64, 128, 256, 512)) * 1007, cpu_ghz=round(rng.uniform(2.4, 5.0), 1),
            disk_space=float(rng.choice((100, 250, 500, 1000, 2000))), disk_bw=rng.uniform(800, 6000),
            inet_up=float(rng.choice((100, 500, 1000, 10000))),
            inet_down=float(rng.choice((500, 1000, 10000))),
            reliability=round(rng.uniform(0.9, 0.999), 4), reliability2=round(rng.uniform(0.88, 0.999), 4),
            dlperf=round(dlperf * n * rng.uniform(0.9, 1.05), 2), cuda_max_good=cuda, driver_version=driver,
            geolocation=rng.choice(_PLACES), datacenter=dc, hosting_type=int(dc),
            verified=rng.random() < 0.85, external=rng.random() < 0.1, static_ip=rng.random() < 0.7,
            direct_port_count=rng.choice((4, 20, 100, 500)), duration=duration, end_date=epoch + duration,
            public_ipaddr=f"203.0.113.{rng.randrange(2, 254)}",
        ))
        offers[-1].verification = "verified" if offers[-1].verified else "unverified"
    return offers


def priced(offer: Offer, storage_gb: float, kind: str) -> dict[str, Any]:
    """The offer as listed for a search with ``allocated_storage`` and ``type``: derived fields filled."""
    row: dict[str, Any] = msgspec.to_builtins(offer)
    disk = storage_gb * offer.storage_cost / HOURS_PER_MONTH
    base = {"bid": offer.min_bid, "reserved": offer.dph_base * 0.7}.get(kind, offer.dph_base)
    total = round(base + disk, 6)
    row["dph_total"] = total
    row["discounted_dph_total"] = round(offer.dph_base * 0.7 + disk, 6)
    row["gpu_total_ram"] = offer.gpu_ram * offer.num_gpus
    row["flops_per_dphtotal"] = round(offer.total_flops / total, 4) if total else 0.0
    row["dlperf_per_dphtotal"] = round(offer.dlperf / total, 4) if total else 0.0
    # Vast's score blends value for money and reliability; this keeps that ordering, not its scale.
    row["score"] = round(row["dlperf_per_dphtotal"] * offer.reliability2, 4)
    return row


ALIASES = {"dph": "dph_total", "cuda_vers": "cuda_max_good", "flops_usd": "flops_per_dphtotal",
           "dlperf_usd": "dlperf_per_dphtotal"}
_CONTROL = {"order", "type", "limit", "allocated_storage", "disable_bundling", "show_incompatible"}
_FIELDS = set(Offer.__struct_fields__)
_CMP: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "neq": operator.ne, "lt": operator.lt, "lte": operator.le,
    "gt": operator.gt, "gte": operator.ge,
}


def _field(name: object) -> str:
    field = ALIASES.get(name, name) if isinstance(name, str) else name
    if not isinstance(field, str) or field not in _FIELDS:
        raise SearchError(f"unknown offer field {name!r}")
    return field


def _coerce(have: Any, want: Any) -> Any:
    """Clients send ids and numbers as strings (dstack's ``{"id": {"eq": "123"}}``); compare as numbers."""
    if isinstance(have, int | float) and not isinstance(have, bool) and isinstance(want, str):
        try:
            return float(want)
        except ValueError:
            raise SearchError(f"cannot compare {want!r} with a number") from None
    return want


def _match(row: dict[str, Any], field: str, op: str, want: Any) -> bool:
    have = row[field]
    # "geolocation" is "City, CC"; filters name either the whole string or just the country code.
    candidates = [have, have.rsplit(", ", 1)[-1]] if field == "geolocation" and have else [have]
    if op in ("in", "notin"):
        if not isinstance(want, list):
            raise SearchError(f"{field}: operator {op!r} needs a list")
        hit = any(c == _coerce(c, w) for c in candidates for w in want)
        return hit if op == "in" else not hit
    if op not in _CMP:
        raise SearchError(f"{field}: unknown operator {op!r}")
    if op in ("eq", "neq"):
        hit = any(c == _coerce(c, want) for c in candidates)
        return hit if op == "eq" else not hit
    if have is None or want is None:
        return False
    try:
        return bool(_CMP[op](have, _coerce(have, want)))
    except TypeError:
        raise SearchError(f"{field}: cannot compare {have!r} with {want!r}") from None


def _order(spec: Any) -> list[tuple[str, bool]]:
    if not isinstance(spec, list):
        raise SearchError("order must be a list of [field, 'asc'|'desc'] pairs")
    keys = []
    for item in spec:
        if not (isinstance(item, list) and len(item) == 2 and item[1] in ("asc", "desc")):
            raise SearchError(f"bad order entry {item!r}; expected [field, 'asc'|'desc']")
        keys.append((_field(item[0]), item[1] == "desc"))
    return keys


def _sort_key(field: str, desc: bool) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    """Missing values (``None``) sort last in either direction."""

    def key(row: dict[str, Any]) -> tuple[bool, Any]:
        value = row[field]
        return ((value is not None) if desc else (value is None)), (0 if value is None else value)

    return key


def search(
    offers: list[Offer], query: dict[str, Any], select: list[str] | None = None
) -> list[dict[str, Any]]:
    """Apply a bundles query; raises ``SearchError`` for anything Vast would reject."""
    kind = query.get("type", "on-demand")
    if kind not in ("on-demand", "bid", "reserved"):
        raise SearchError(f"type must be 'on-demand', 'bid' or 'reserved', not {kind!r}")
    storage = query.get("allocated_storage", DEFAULT_STORAGE_GB)
    limit = query.get("limit", 64)
    if isinstance(storage, bool) or not isinstance(storage, int | float) or storage < 0:
        raise SearchError("allocated_storage must be a non-negative number of GB")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise SearchError("limit must be a non-negative integer")
    filters: list[tuple[str, str, Any]] = []
    for name, ops in query.items():
        if name in _CONTROL:
            continue
        field = _field(name)
        if not isinstance(ops, dict):
            raise SearchError(f"{name}: expected an operator map such as {{'eq': value}}")
        filters.extend((field, op, want) for op, want in ops.items())
    rows = [r for r in (priced(o, float(storage), kind) for o in offers)
            if all(_match(r, f, op, want) for f, op, want in filters)]
    rows.sort(key=lambda r: r["id"])  # a stable base order so ties repeat run to run
    for field, desc in reversed(_order(query.get("order", [["score", "desc"]]))):
        rows.sort(key=_sort_key(field, desc), reverse=desc)
    rows = rows[:limit]
    if select and "*" not in select:
        cols = [_field(c) for c in select]
        rows = [{c: r[c] for c in ["id", *cols]} for r in rows]
    return rows
