"""A connector paired with the simulator of its provider, for the one contract suite.

Each provider adds ``tests/contract/pair_<provider>.py`` defining ``PAIR``. The suite serves
``make_app()`` with uvicorn on a real loopback port and builds the connector against that URL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeskillet.providers.base import AllocationRequest, Connector


@dataclass(frozen=True)
class Pair:
    provider: str
    make_app: Callable[[], Any]  # the simulator, fault-free and seeded
    make_connector: Callable[[str, str], Connector]  # (base_url, api_key) -> connector
    model: str  # a model the simulator serves
    api_key: str = "sim-key"  # what the simulator accepts
    ready_path: str = "/"  # answers (< 500) once the app is up
    want: AllocationRequest = field(default_factory=AllocationRequest)  # what allocate/quote ask for
    # How many allocations the simulator holds live (not released/terminated); None: not tracked.
    live_allocations: Callable[[Any], int] | None = None
