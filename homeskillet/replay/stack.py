"""The live stack a replay runs against: NATS (one server or a cluster), the query side, and one
pool-host process-part per fleet entry, each on its own NATS connection so a worker can be killed
and restarted, and a NATS node killed under the pools it serves, as the fault timeline says.

Pool hosts use the ``replay`` engine configured from the fleet entry (see ``engine.py``); the
query side is a ``Runtime`` serving ``hs.query`` exactly as ``homeskillet up`` does.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import msgspec
import nats

from ..config import HttpSettings, PoolSpec, Settings
from ..errors import HomeskilletError
from ..natsd import NatsServer
from ..runtime import Runtime
from . import engine as _engine  # registers the "replay" connector
from .scenario import FleetPool, Scenario
from .vtime import pool_spec

__all__ = ["LiveStack", "live_pool_spec"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_pool_spec(fp: FleetPool, seed: int) -> PoolSpec:
    """The fleet entry as a pool served by the replay engine (standing for ``fp.simulates``)."""
    options = {"simulates": fp.simulates, "seed": seed, "start_ms": fp.start_ms, "ms_per_token": fp.ms_per_token,
               "jitter_sigma": fp.jitter_sigma, "tail_rate": fp.tail_rate, "tail_factor": fp.tail_factor,
               "failure_rate": fp.failure_rate, "preempt_rate": fp.preempt_rate}
    if fp.answers is not None:
        options["answers"] = msgspec.to_builtins(fp.answers)
    return msgspec.structs.replace(pool_spec(fp), provider="replay", options=options)


class LiveStack:
    def __init__(self, scenario: Scenario, *, http: bool = False) -> None:
        self.s = scenario
        self.http = http  # the query side also serves the HTTP API (on a free loopback port)
        self.prefix = f"replay{uuid.uuid4().hex[:8]}"
        self.nodes: list[NatsServer] = []
        self.down_nodes: dict[int, NatsServer] = {}
        self.query_side: Runtime | None = None
        self.pool_sides: dict[str, Runtime] = {}
        self.dead_pools: set[str] = set()
        self.route_ports: list[int] = []
        self.retired: dict[str, list[_engine.ReplayEngine]] = {}  # engines of killed workers, for the counts

    @property
    def url(self) -> str:
        return self.nodes[0].url

    @property
    def http_url(self) -> str:
        if self.query_side is None or self.query_side.http is None:
            raise HomeskilletError("this stack serves no HTTP API (LiveStack(..., http=True))")
        return self.query_side.http.url

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
        # A clustered JetStream is ready only with a quorum, so the nodes start together, each
        # told every other's route port up front.
        self.route_ports = [_free_port() for _ in range(n)]
        self.nodes = [self._node(k) for k in range(n)]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(NatsServer.start, self.nodes))

    def _node(self, k: int, port: int = -1) -> NatsServer:
        routes = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != k]
        return NatsServer(name=f"{self.prefix}-{k}", port=port, cluster_name=self.prefix,
                          cluster_port=self.route_ports[k], routes=routes)

    def _node_for(self, i: int) -> NatsServer:
        # The query side (and the load driver) use node 0; pools spread over the others.
        n = len(self.nodes)
        return self.nodes[0] if n == 1 else self.nodes[1 + i % (n - 1)]

    async def _jetstream_ready(self, timeout: float = 30.0) -> None:
        """Until the cluster's JetStream answers (it elects a meta leader after the nodes are up)."""
        nc = await nats.connect(servers=[self.url])
        try:
            js = nc.jetstream()
            end = time.monotonic() + timeout
            while True:
                try:
                    await js.account_info()
                    return
                except nats.errors.Error as exc:
                    if time.monotonic() > end:
                        raise HomeskilletError(f"the NATS cluster's JetStream is not ready after {timeout:g}s: "
                                               f"{exc!r}") from None
                    await asyncio.sleep(0.1)
        finally:
            await nc.close()

    async def start(self) -> LiveStack:
        await asyncio.to_thread(self._start_nodes)
        if len(self.nodes) > 1:
            await self._jetstream_ready()
        query_settings = self._settings(self.url, [])
        if self.http:
            query_settings = msgspec.structs.replace(query_settings, http=HttpSettings(listen="127.0.0.1:0"))
        self.query_side = Runtime(query_settings)
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

    def engines(self, name: str) -> list[_engine.ReplayEngine]:
        """Every engine that served the pool: killed workers' and the current one."""
        current = self.engine(name)
        return [*self.retired.get(name, []), *([current] if current is not None else [])]

    def engine(self, name: str) -> _engine.ReplayEngine | None:
        rt = self.pool_sides.get(name)
        conn = rt.hosts[name].connector if rt is not None and name in rt.hosts else None
        return conn if isinstance(conn, _engine.ReplayEngine) else None

    async def kill_pool(self, name: str) -> None:
        """The worker dies: its strikes in flight never answer (the dispatcher finds them by silence)."""
        engine = self.engine(name)
        rt = self.pool_sides.pop(name, None)
        if engine is not None:
            self.retired.setdefault(name, []).append(engine)
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
        await asyncio.to_thread(old.stop)  # clean up its temporary directory
        node = self._node(k, port=old.port)
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
