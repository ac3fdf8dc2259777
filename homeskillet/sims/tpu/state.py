"""What the TPU simulator remembers: nodes, long-running operations, chips in use, and billing.

Time-driven changes (CREATING → READY, deletions, stop/start) are events on a heap, applied by
``tick()`` at the start of every request in clock order, so tests advance a ``ManualClock``
instead of sleeping. Chips are held per (zone, family) from create until delete, stop or
preemption; after every event, queued resources waiting for capacity get a chance (``queued.py``).
Billing is per second while a node is READY, at the catalogue's chip-hour price.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeskillet.sims.base import SimConfig, SimRandom
from homeskillet.sims.ionet.clock import Clock  # provider-neutral; see the package docstring
from homeskillet.sims.tpu.catalog import AcceleratorSpec, TpuKnobs
from homeskillet.sims.tpu.errors import GoogleError, not_found
from homeskillet.sims.tpu.wire import NodeBody

__all__ = ["BillingSegment", "Node", "Operation", "TpuSim"]

Action = Callable[[float], None]


@dataclass
class Node:
    project: str
    zone: str
    node_id: str
    spec: AcceleratorSpec
    body: NodeBody
    numeric_id: str
    created_at: float
    endpoints: list[dict[str, Any]]
    state: str = "CREATING"
    queued_resource: str | None = None
    holds_chips: bool = False
    billing_since: float | None = None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/locations/{self.zone}/nodes/{self.node_id}"

    @property
    def spot(self) -> bool:
        return self.body.spot


@dataclass
class Operation:
    name: str
    target: str
    verb: str
    created_at: float
    done_at: float | None = None
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    cancel_requested: bool = False
    on_cancel: Action | None = None  # undo for a create still in flight

    @property
    def done(self) -> bool:
        return self.done_at is not None


@dataclass(frozen=True)
class BillingSegment:
    node: str
    start: float
    end: float
    chips: int
    usd_per_chip_hour: float

    @property
    def usd(self) -> float:
        return (self.end - self.start) / 3600 * self.chips * self.usd_per_chip_hour


@dataclass
class TpuSim:
    config: SimConfig
    knobs: TpuKnobs
    clock: Clock
    random: SimRandom = field(init=False)
    nodes: dict[str, Node] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    billing: list[BillingSegment] = field(default_factory=list)
    used_chips: dict[tuple[str, str], int] = field(default_factory=dict)
    after_event: list[Action] = field(default_factory=list)  # run after each event: queue admission
    on_node_lost: list[Callable[[Node, float, str], None]] = field(default_factory=list)  # (node, at, by)
    _events: list[tuple[float, int, Action]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.random = SimRandom(self.config)

    # -- time ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self.clock.now()

    def at(self, due: float, action: Action) -> None:
        heapq.heappush(self._events, (due, next(self._seq), action))

    def tick(self) -> None:
        """Apply every event due by now, in time order; each sees its own due time."""
        now = self.now()
        while self._events and self._events[0][0] <= now:
            due, _, action = heapq.heappop(self._events)
            action(due)
            self.settle(due)
        self.settle(now)

    def settle(self, at: float) -> None:
        for hook in self.after_event:
            hook(at)

    # -- capacity and money --------------------------------------------------------------------

    def free_chips(self, zone: str, family: str) -> int:
        return self.knobs.chips(zone, family, self.config.capacity) - self.used_chips.get((zone, family), 0)

    def hold(self, node: Node) -> None:
        if not node.holds_chips:
            key = (node.zone, node.spec.family)
            self.used_chips[key] = self.used_chips.get(key, 0) + node.spec.chips
            node.holds_chips = True

    def release(self, node: Node, at: float) -> None:
        self.stop_billing(node, at)
        if node.holds_chips:
            self.used_chips[node.zone, node.spec.family] -= node.spec.chips
            node.holds_chips = False

    def price_per_chip_hour(self, family: str, spot: bool) -> float:
        price = self.knobs.prices[family]
        return price.spot if spot else price.on_demand

    def start_billing(self, node: Node, at: float) -> None:
        node.billing_since = at

    def stop_billing(self, node: Node, at: float) -> None:
        if node.billing_since is not None:
            rate = self.price_per_chip_hour(node.spec.family, node.spot)
            self.billing.append(BillingSegment(node.name, node.billing_since, at, node.spec.chips, rate))
            node.billing_since = None

    def cost_usd(self, node_name: str | None = None) -> float:
        """Billed so far, per second, including nodes still running."""
        total = sum(s.usd for s in self.billing if node_name in (None, s.node))
        now = self.now()
        for node in self.nodes.values():
            if node.billing_since is not None and node_name in (None, node.name):
                rate = self.price_per_chip_hour(node.spec.family, node.spot)
                total += (now - node.billing_since) / 3600 * node.spec.chips * rate
        return total

    # -- identifiers and lookups ---------------------------------------------------------------

    def check_zone(self, project: str, zone: str, *, wildcard: bool = False) -> None:
        if not (zone in self.knobs.zones or (wildcard and zone == "-")):
            raise not_found(f"projects/{project}/locations/{zone}")

    def node(self, project: str, zone: str, node_id: str) -> Node:
        name = f"projects/{project}/locations/{zone}/nodes/{node_id}"
        if (node := self.nodes.get(name)) is None:
            raise not_found(name)
        return node

    def hex(self, digits: int) -> str:
        return f"{self.random.rng.getrandbits(4 * digits):0{digits}x}"

    def new_operation(self, project: str, zone: str, verb: str, target: str) -> Operation:
        now = self.now()
        op_id = f"operation-{int(now * 1000)}-{self.hex(13)}-{self.hex(8)}-{self.hex(8)}"
        op = Operation(f"projects/{project}/locations/{zone}/operations/{op_id}", target, verb, now)
        self.operations[op.name] = op
        return op

    def finish(self, op: Operation, at: float, *, response: dict[str, Any] | None = None,
               error: GoogleError | None = None) -> None:
        if not op.done:
            op.done_at, op.response = at, response
            op.error = error.rpc_status() if error else None

    def cancel(self, op: Operation) -> None:
        """Best effort, as Google's: only a create still in flight is actually undone."""
        op.cancel_requested = True
        if not op.done and op.on_cancel is not None:
            now = self.now()
            op.on_cancel(now)
            self.finish(op, now, error=GoogleError("CANCELLED", "Operation was cancelled."))
            self.settle(now)

    # -- preemption ----------------------------------------------------------------------------

    def preempt(self, node_id: str, zone: str | None = None, project: str | None = None) -> Node:
        """Evict a spot/preemptible node now, as Google would: state PREEMPTED, chips and billing stop."""
        self.tick()
        found = [n for n in self.nodes.values()
                 if n.node_id == node_id and zone in (None, n.zone) and project in (None, n.project)]
        if len(found) != 1:
            raise KeyError(f"expected one node {node_id!r} (zone={zone}, project={project}), "
                           f"found {len(found)}")
        node = found[0]
        if not node.spot:
            raise ValueError(f"{node.name} is not spot or preemptible, so it cannot be preempted")
        if node.state in ("PREEMPTED", "DELETING"):
            return node
        now = self.now()
        self.release(node, now)
        node.state = "PREEMPTED"
        for hook in self.on_node_lost:
            hook(node, now, "SERVICE")
        self.settle(now)
        return node
