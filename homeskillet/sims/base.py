"""What every provider simulator shares: seeded randomness, fault injection, latency, fake text.

A simulator is an ASGI app speaking one provider's real protocol (``provider-apis.md``). Each
``homeskillet.sims.<provider>`` module exposes ``create_app(config: SimConfig | None) -> ASGIApp``;
in tests it runs in-process behind ``httpx.ASGITransport``, in scenario replay uvicorn serves it
on a real port (``homeskillet sim <provider>``). Provider-specific settings live in
``SimConfig.extra`` so one TOML file shape serves all simulators.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "FaultPlan",
    "LatencyModel",
    "SimConfig",
    "SimRandom",
    "count_tokens",
    "count_words",
    "load_sim_config",
    "sim_completion",
]


class FaultPlan(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Probabilities (0..1) of each failure mode, drawn per request from the seeded RNG."""

    refuse_rate: float = 0.0  # allocation/rent refused for lack of capacity
    rate_limit_rate: float = 0.0  # HTTP 429
    unavailable_rate: float = 0.0  # HTTP 503
    timeout_rate: float = 0.0  # request hangs for ``timeout_s`` (client should give up first)
    timeout_s: float = 30.0
    stale_offer_rate: float = 0.0  # an offer listed by search is gone at create time
    preempt_rate: float = 0.0  # a preemptible allocation is evicted mid-inference
    half_created_rate: float = 0.0  # create fails but leaves a stopped/billed resource behind
    slow_ready_s: float = 0.0  # extra seconds before a created resource becomes ready
    outage: bool = False  # every request fails with the provider's 503 envelope


class LatencyModel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Latency of one inference: base + per output token, times a lognormal jitter."""

    base_ms: float = 20.0
    per_token_ms: float = 1.0
    jitter_sigma: float = 0.2
    cold_load_ms: float = 0.0  # added once per model until it is warm
    tail_rate: float = 0.0  # share of requests that take ``tail_factor`` times longer
    tail_factor: float = 10.0


class SimConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seed: int = 0
    # 0 = answer at once but report the modelled durations; 1 = real time; 0.1 = ten times faster.
    time_scale: float = 1.0
    faults: FaultPlan = msgspec.field(default_factory=FaultPlan)
    latency: LatencyModel = msgspec.field(default_factory=LatencyModel)
    capacity: int = 8  # concurrent allocations / instances / requests the provider accepts
    api_key: str = "sim-key"  # the credential the simulator accepts
    extra: dict[str, Any] = msgspec.field(default_factory=dict)  # provider-specific knobs


def load_sim_config(path: str | Path) -> SimConfig:
    """Decode a simulator TOML file; an unknown key is an error naming the file and the key."""
    data = Path(path).read_bytes()
    try:
        return msgspec.toml.decode(data, type=SimConfig)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from exc


class SimRandom:
    """One seeded RNG per simulator instance so a run with the same seed repeats exactly."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self._warm: set[str] = set()

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def latency_ms(self, output_tokens: int, model: str = "") -> float:
        lat = self.config.latency
        ms = lat.base_ms + lat.per_token_ms * output_tokens
        ms *= self.rng.lognormvariate(0.0, lat.jitter_sigma) if lat.jitter_sigma > 0 else 1.0
        if self.chance(lat.tail_rate):
            ms *= lat.tail_factor
        if model and model not in self._warm:
            ms += lat.cold_load_ms
            self._warm.add(model)
        return ms

    def is_warm(self, model: str) -> bool:
        return model in self._warm

    async def sleep_ms(self, ms: float) -> None:
        """Sleep the modelled time, scaled; time_scale 0 never sleeps."""
        if self.config.time_scale > 0 and ms > 0:
            await asyncio.sleep(ms * self.config.time_scale / 1000.0)


_VOCAB = (
    "the a compute pool covenant strike fragment answer model token latency cost budget "
    "queue lease bid quote fusion result capacity tenant provider accelerator memory "
    "throughput request server node cluster graph vector matrix signal energy system"
).split()


# ASCII whitespace (as str.split() sees it) to b" ", every other ASCII byte to b"x": the words of
# an ASCII text are then the b"x" runs, counted in C without a list of them.
_WORD_MASK = bytes(32 if chr(i).isspace() else 120 for i in range(256))


def count_words(text: str) -> int:
    """Whitespace-separated words, as ``len(text.split())``, without the list for ASCII text."""
    if text.isascii():
        b = b" " + text.encode("ascii").translate(_WORD_MASK)
        return b.count(b" x")
    return len(text.split())


def count_tokens(text: str) -> int:
    """A provider-neutral token estimate: about 4 characters per token, at least one per word.
    Linear and cheap at any size (a 1 MiB prompt in a few milliseconds)."""
    return max(count_words(text), (len(text) + 3) // 4)


def sim_completion(model: str, prompt: str, max_tokens: int) -> str:
    """Deterministic text for (model, prompt): same input, same answer, on every simulator."""
    digest = hashlib.sha256(f"{model}\x00{prompt}".encode()).digest()
    rng = random.Random(digest)
    n = max(1, min(max_tokens, 12 + digest[0] % 24))
    words = [rng.choice(_VOCAB) for _ in range(n)]
    return f"[{model}] " + " ".join(words)
