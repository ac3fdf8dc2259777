"""Bounded maps for state that gains an entry per query, strike or request.

A long-running process keeps some per-query records after the query has ended: answers for
``GET /api/v1/results``, strike results for idempotency, settled strike ids, ended reservations.
Each lives in a ``BoundedDict``: insertion order, and once it holds ``cap`` entries the oldest
goes for each new one. Its caps are set in the config file (``[retention]``, see
``config.RetentionSettings``) and listed in docs/architecture.md ("Memory bounds").

Every bounded structure is registered under a name and exported as Prometheus gauges
``hs_retained_entries{structure}`` and ``hs_retained_cap{structure}`` and the counter
``hs_retained_evicted_total{structure}`` (summed over the instances alive in the process), so
an operator, and ``bench/soak.py``, can see each one fill up to its cap and stay there.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

__all__ = ["BoundedDict", "Retained", "retained", "track"]

K = TypeVar("K")
V = TypeVar("V")


class Retained(Protocol):
    """What the collector reads: how many entries now, the cap, and how many were dropped."""

    @property
    def cap(self) -> int: ...

    @property
    def evicted(self) -> int: ...

    def __len__(self) -> int: ...


class BoundedDict(OrderedDict[K, V]):
    """A dict that keeps at most ``cap`` entries, dropping the oldest inserted (FIFO; call
    ``move_to_end`` on a hit for LRU). ``evicted`` counts the entries dropped for room;
    ``on_evict(key, value)``, if given, is told of each."""

    def __init__(self, cap: int, name: str = "", on_evict: Callable[[K, V], object] | None = None) -> None:
        if cap < 1:
            raise ValueError(f"a cap must be ≥ 1, got {cap}" + (f" for {name}" if name else ""))
        super().__init__()
        self.cap = cap
        self.evicted = 0
        self.on_evict = on_evict
        if name:
            track(name, self)

    def __setitem__(self, key: K, value: V) -> None:
        super().__setitem__(key, value)
        while len(self) > self.cap:
            old = self.popitem(last=False)
            self.evicted += 1
            if self.on_evict is not None:
                self.on_evict(*old)


class _Registry(Collector):
    """The Prometheus side: every tracked structure, by name, while it is alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[int, weakref.ref[Any]]] = {}  # by name, by id (dicts are not hashable)

    def add(self, name: str, obj: Retained) -> None:
        with self._lock:
            refs = self._items.setdefault(name, {})
            for key in [k for k, r in refs.items() if r() is None]:  # dead instances (no weakref callback:
                del refs[key]  # one could run inside a collection while this lock is held)
            refs[id(obj)] = weakref.ref(obj)

    def snapshot(self) -> dict[str, tuple[int, int, int]]:
        """name -> (entries, cap, evicted), summed over the live instances of that name."""
        with self._lock:
            items = {name: [r() for r in refs.values()] for name, refs in self._items.items()}
        out = {}
        for name, objs in items.items():
            live = [o for o in objs if o is not None]
            if live:
                out[name] = (sum(len(o) for o in live), sum(o.cap for o in live), sum(o.evicted for o in live))
        return out

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        entries = GaugeMetricFamily("hs_retained_entries", "Entries held by a bounded per-query structure",
                                    labels=["structure"])
        caps = GaugeMetricFamily("hs_retained_cap", "The cap of a bounded per-query structure ([retention])",
                                 labels=["structure"])
        evicted = CounterMetricFamily("hs_retained_evicted", "Entries dropped to stay within the cap",
                                      labels=["structure"])
        for name, (n, cap, ev) in sorted(snap.items()):
            entries.add_metric([name], n)
            caps.add_metric([name], cap)
            evicted.add_metric([name], ev)
        yield from (entries, caps, evicted)


_registry = _Registry()
REGISTRY.register(_registry)


def track(name: str, obj: Retained) -> None:
    """Export ``obj`` (anything with ``len``, ``cap`` and ``evicted``) under ``name``."""
    _registry.add(name, obj)


def retained() -> dict[str, tuple[int, int, int]]:
    """name -> (entries, cap, evicted) for every tracked structure alive in this process."""
    return _registry.snapshot()
