"""The live stack a replay runs against: NATS (one server or a cluster), the query side, and one
pool-host process-part per fleet entry, each on its own NATS connection so a worker can be killed
and restarted, and a NATS node killed under the pools it serves, as the fault timeline says.

Pool hosts use the ``replay`` engine configured from the fleet entry (see ``engine.py``); the
query side is a ``Runtime`` serving ``hs.query`` exactly as ``homeskillet up`` does.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import msgspec

from ..config import PoolSpec, Settings
from ..errors import HomeskilletError
from ..natsd import NatsServer
from ..runtime import Runtime
from . import engine as _engine  # registers the "replay" connector
from .scenario import FleetPool, Scenario
from .vtime import pool_spec

__all__ = ["LiveStack", "live_pool_spec"]


def live_pool_spec(fp: FleetPool, seed: int) -> PoolSpec:
    """The fleet entry as a pool served by the replay engine (standing for ``fp.simulates``)."""
    options = {"simulates": fp.simulates, "seed": seed, "start_ms": fp.start_ms, "ms_per_token": fp.ms_per_token,
               "jitter_sigma": fp.jitter_sigma, "tail_rate": fp.tail_rate, "tail_factor": fp.tail_factor,
               "failure_rate": fp.failure_rate, "preempt_rate": fp.preempt_rate}
    return msgspec.structs.replace(pool_spec(fp), provider="replay", options=options)


class LiveStack:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.prefix = f"replay{uuid.uuid4().hex[:8]}"
        self.nodes: list[NatsServer] = []
        self.down_nodes: dict[int, NatsServer] = {}
        self.query_side: Runtime | None = None
        self.pool_sides: dict[str, Runtime] = {}
        self.dead_pools: set[str] = set()

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def _settings(self, url: str, pools: list[PoolSpec]) -> Settings:
        st = self.s.stack
        return Settings(nats=[url], prefix=self.prefix, pools=pools, quote_interval_ms=st.quote_interval_ms,
                        quote_ttl_ms=3 * st.quote_interval_ms, silence_ms=st.silence_ms)

    def _start_nodes(self) -> None:
        n = self.s.stack.nats_nodes
        if n == 1:
            self.nodes = [NatsServer(name=f"{self.prefix}-0")]
            self.nodes[0].start()
            return
        # No JetStream in the cluster: a clustered JetStream waits for a quorum before it is ready,
        # and nothing a replay exercises uses it yet (parked fragments and the ledger are in memory).
        first = NatsServer(name=f"{self.prefix}-0", cluster_name=self.prefix, cluster_port=-1, jetstream=False)
        first.start()
        self.nodes = [first]
        for k in range(1, n):
            node = NatsServer(name=f"{self.prefix}-{k}", cluster_name=self.prefix, cluster_port=-1, jetstream=False,
                              routes=[f"nats-route://127.0.0.1:{self._route_port(first)}"])
            node.start()
            self.nodes.append(node)
        for node in self.nodes:
            self._route_port(node)

    @staticmethod
    def _route_port(node: NatsServer, timeout: float = 10.0) -> int:
        """The node's route port, read from its log (nats-server may log it just after "ready")."""
        end = time.monotonic() + timeout
        while node.route_port is None:
            if time.monotonic() > end:
                raise HomeskilletError(f"nats-server {node.name} did not say its route port within {timeout:g}s")
            time.sleep(0.01)
        return node.route_port

    def _node_for(self, i: int) -> NatsServer:
        # The query side (and the load driver) use node 0; pools spread over the others.
        n = len(self.nodes)
        return self.nodes[0] if n == 1 else self.nodes[1 + i % (n - 1)]

    async def start(self) -> LiveStack:
        await asyncio.to_thread(self._start_nodes)
        self.query_side = Runtime(self._settings(self.url, []))
        await self.query_side.start()
        for fp in self.s.pools:
            await self.start_pool(fp.name)
        await self.query_side.wait_for_pools([p.name for p in self.s.pools], timeout=30)
        return self

    async def start_pool(self, name: str) -> None:
        i, fp = next((i, p) for i, p in enumerate(self.s.pools) if p.name == name)
        rt = Runtime(self._settings(self._node_for(i).url, [live_pool_spec(fp, self.s.seed * 1000 + i)]),
                     serve_queries=False)
        await rt.start()
        if name in rt.disabled:
            raise HomeskilletError(f"pool {name} could not start: {rt.disabled[name]}")
        self.pool_sides[name] = rt
        self.dead_pools.discard(name)

    def engine(self, name: str) -> _engine.ReplayEngine | None:
        rt = self.pool_sides.get(name)
        conn = rt.hosts[name].connector if rt is not None and name in rt.hosts else None
        return conn if isinstance(conn, _engine.ReplayEngine) else None

    async def kill_pool(self, name: str) -> None:
        """The worker dies: its strikes in flight never answer (the dispatcher finds them by silence)."""
        rt = self.pool_sides.pop(name, None)
        if rt is not None:
            self.dead_pools.add(name)
            await rt.stop()

    async def kill_node(self, k: int) -> None:
        node = self.nodes[k]
        self.down_nodes[k] = node
        await asyncio.to_thread(node.kill)

    async def restart_node(self, k: int) -> None:
        old = self.down_nodes.pop(k, None)
        if old is None:
            return
        old.stop()  # clean up its temporary directory
        routes = [f"nats-route://127.0.0.1:{n.route_port}" for j, n in enumerate(self.nodes) if j != k]
        node = NatsServer(name=f"{self.prefix}-{k}", port=old.port, cluster_name=self.prefix,
                          cluster_port=old.route_port, routes=routes, jetstream=False)
        await asyncio.to_thread(node.start)
        self.nodes[k] = node

    async def stop(self) -> None:
        for rt in list(self.pool_sides.values()):
            await rt.stop()
        self.pool_sides.clear()
        if self.query_side is not None:
            await self.query_side.stop()
        for node in self.nodes:
            await asyncio.to_thread(node.stop)

    async def __aenter__(self) -> LiveStack:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
