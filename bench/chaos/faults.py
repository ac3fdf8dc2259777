"""Faults against real processes: nats-server nodes, `homeskillet up` orchestrators and `homeskillet
pool serve` hosts, each a child process killed with SIGKILL, as a crash would.

Each fault runs an open-loop load (``rate`` queries a second for ``duration_s``) from a client of
its own, injects its fault a third of the way in, and tallies what every query ended in:

- answered: an Answer; errors: an explicit error reply (by code), with how many came outside the
  5 s after the fault; lost: no reply at all before the client gave up (hard deadline + 10 s);
  late: an answer after the query's hard deadline (counted from when it was sent).
- charged: the tenant's spend in the shared ledger (`<prefix>-ledger`) against the sum of the
  answered queries' costs; overspend = charged − answered (a strike charged twice, or charged
  for a query that did not answer); holds open: holds left in the ledger at the end.

Used by ``bench/chaos/run.py`` (long forms, the table in docs/benchmarks.md) and by
``tests/integration/test_chaos.py`` (short forms).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import nats.aio.msg

from homeskillet.budgets import BudgetRecord
from homeskillet.config import PoolSpec, Settings, TenantSettings
from homeskillet.kvstate import bucket_name, key_token
from homeskillet.natsd import NatsCluster, NatsServer, stream_leader, wait_for_jetstream
from homeskillet.wire import Answer, ErrorReply, Query, encode

__all__ = ["HEADER", "Tally", "node_kill", "orchestrator_kill", "orchestrator_pause", "pool_kill"]

TENANT = "chaos"
WINDOW_S = 5.0  # errors within this long after a fault are the fault's price; outside it they count


@dataclass
class Tally:
    fault: str
    sent: int = 0
    answered: int = 0
    lost: int = 0
    late: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    errors_outside_window: int = 0
    answered_usd: float = 0.0
    charged_usd: float = 0.0
    holds_open: int = 0
    duplicates: int = 0  # second (or later) replies to one query
    taken_over: int = 0  # queries a peer answered (from the dead orchestrator's records)
    p50_ms: float = 0.0
    max_ms: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def overspend_usd(self) -> float:
        return self.charged_usd - self.answered_usd

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def row(self) -> str:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "0"
        return (f"| {self.fault} | {self.sent} | {self.answered} | {self.error_count} ({errs}; "
                f"{self.errors_outside_window} outside {WINDOW_S:g} s) | {self.lost} | {self.duplicates} | "
                f"{self.late} | "
                f"{self.overspend_usd * 1e6:+.2f} | {self.holds_open} | {self.p50_ms:.0f} / {self.max_ms:.0f} |")


HEADER = ("| fault | sent | answered | errors | lost | answered twice | late | overspend µ$ | holds open | "
          "latency p50 / max ms |\n|---|---|---|---|---|---|---|---|---|---|")


def echo_pool(name: str, delay_ms: float) -> PoolSpec:
    return PoolSpec(name=name, provider="echo", pool_class="standard", vram_mb=81920, tflops=990,
                    usd_per_mtok_in=0.1, usd_per_mtok_out=0.2, start_ms=delay_ms, ms_per_token=0, capacity=512,
                    queue_limit=4096, options={"delay_ms": delay_ms})


class Child:
    """`homeskillet up` or `homeskillet pool serve` in a child process, ready when it says so."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        log = self.log_path.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "homeskillet.cli", "--log-level", "WARNING", *args],
                                     stdout=subprocess.PIPE, stderr=log, text=True)
        log.close()
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("homeskillet "):
                self._ready.set()

    def wait_ready(self, timeout: float = 60.0) -> None:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            tail = self.log_path.read_text()[-3000:]
            raise RuntimeError(f"{self.name} did not start; its log ends:\n{tail}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def events(self, name: str) -> int:
        return sum(1 for line in self.log_path.read_text().splitlines() if name in line)


class World:
    """The processes of one fault run, stopped together."""

    def __init__(self, *, nodes: int, claim_ttl_s: float = 2.0) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hs-chaos-"))
        self.prefix = f"chaos{uuid.uuid4().hex[:8]}"
        self.claim_ttl_s = claim_ttl_s
        self.cluster: NatsCluster | None = NatsCluster(nodes, name=self.prefix) if nodes > 1 else None
        self.single: NatsServer | None = None if nodes > 1 else NatsServer(name=self.prefix)
        self.children: dict[str, Child] = {}
        self.pools: list[PoolSpec] = []

    @property
    def urls(self) -> list[str]:
        return self.cluster.urls if self.cluster is not None else [self.single.url] if self.single else []

    def start_nats(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        elif self.single is not None:
            self.single.start()

    def config(self, pools: list[PoolSpec], nats_urls: list[str] | None = None) -> Path:
        path = self.tmp / f"settings-{len(list(self.tmp.glob('settings-*')))}.toml"
        s = Settings(nats=nats_urls or self.urls, prefix=self.prefix, pools=pools, parked_claim_ttl_s=self.claim_ttl_s,
                     tenants={TENANT: TenantSettings(daily_usd=1000.0)})
        path.write_text(msgspec.toml.encode(s).decode())
        return path

    def start(self, name: str, kind: str, pools: list[PoolSpec], nats_urls: list[str] | None = None) -> Child:
        self.pools.extend(p for p in pools if p not in self.pools)
        cfg = str(self.config(self.pools if kind == "pool" else pools, nats_urls))
        args = (["up", "--config", cfg] if kind == "up"
                else ["pool", "serve", "--config", cfg, *[p.name for p in pools]])
        child = Child(name, args, self.tmp)
        self.children[name] = child
        return child

    def wait_ready(self) -> None:
        for child in self.children.values():
            child.wait_ready()

    def stop(self) -> None:
        for child in self.children.values():
            child.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.single is not None:
            self.single.stop()


@contextlib.contextmanager
def world(*, nodes: int, claim_ttl_s: float = 2.0) -> Iterator[World]:
    w = World(nodes=nodes, claim_ttl_s=claim_ttl_s)
    try:
        w.start_nats()
        yield w
    finally:
        w.stop()


async def _load(nc: nats.NATS, w: World, tally: Tally, *, rate: float, duration_s: float, hard_ms: int,
                fault_at_s: float, fault: Callable[[], Awaitable[None]]) -> None:
    """Open-loop: one query every 1/rate s; the fault runs at ``fault_at_s``; waits for every reply.
    Replies come to one wildcard inbox, so a second reply to the same query is seen and counted."""
    overrides = {"qos": {"hard_deadline_ms": hard_ms, "latency_target_ms": hard_ms}}
    subject = f"{w.prefix}.query"
    inbox = f"_INBOX.chaos.{uuid.uuid4().hex}"
    latencies: list[float] = []
    fault_time: list[float] = []
    waiting: dict[str, asyncio.Future[nats.aio.msg.Msg]] = {}
    replies: Counter[str] = Counter()

    async def on_reply(msg: nats.aio.msg.Msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        replies[key] += 1
        fut = waiting.get(key)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    sub = await nc.subscribe(f"{inbox}.*", cb=on_reply)

    async def one(i: int) -> None:
        q = Query(query_id=f"chaos-{i}-{uuid.uuid4().hex[:6]}", tenant=TENANT, prompt=f"chaos query {i}",
                  overrides=overrides)
        key = str(i)
        waiting[key] = fut = asyncio.get_running_loop().create_future()
        t0 = time.monotonic()
        await nc.publish(subject, encode(q), reply=f"{inbox}.{key}")
        try:
            msg = await asyncio.wait_for(fut, hard_ms / 1000 + 10)
        except TimeoutError:
            tally.lost += 1
            if fault_time:
                tally.notes.append(f"lost query {q.query_id} sent {1000 * (t0 - fault_time[0]):+.0f} ms from the fault")
            return
        elapsed = (time.monotonic() - t0) * 1000
        if not msg.data:  # a status message from the server: 503 = no orchestrator subscribed right then
            status = (msg.headers or {}).get("Status", "")
            _error(tally, "no_responders" if status == "503" else f"status_{status or 'empty'}", t0, fault_time)
            return
        result = msgspec.json.decode(msg.data, type=Answer | ErrorReply)
        if isinstance(result, ErrorReply):
            if result.code not in tally.errors:
                tally.notes.append(f"{result.code}: {result.message[:300]}")
            _error(tally, result.code, t0, fault_time)
            return
        tally.answered += 1
        tally.answered_usd += result.cost_usd
        latencies.append(elapsed)
        if elapsed > hard_ms:
            tally.late += 1

    async def inject() -> None:
        await asyncio.sleep(fault_at_s)
        fault_time.append(time.monotonic())
        await fault()

    tasks = [asyncio.create_task(inject())]
    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) - start < duration_s:
        due = start + i / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    tally.sent = i
    await asyncio.gather(*tasks)
    await nc.flush()
    await asyncio.sleep(0.5)  # a second answer to a query comes right after its first, if at all
    await sub.unsubscribe()
    tally.duplicates = sum(n - 1 for n in replies.values() if n > 1)
    latencies.sort()
    if latencies:
        tally.p50_ms, tally.max_ms = latencies[len(latencies) // 2], latencies[-1]


def _fault_at(duration_s: float, rate: float) -> float:
    # Half-way between two sends: the fault does not race a query being sent. A query in the air
    # through a dying node or into a dying process's socket is lost by NATS itself (request-reply
    # is at most once; a client retries); what is measured is what Homeskillet loses.
    return (round(duration_s / 3 * rate) + 0.5) / rate


def _error(tally: Tally, code: str, sent_at: float, fault_time: list[float]) -> None:
    tally.errors[code] += 1
    now = time.monotonic()
    if not fault_time or not (fault_time[0] <= now <= fault_time[0] + WINDOW_S
                              or fault_time[0] <= sent_at <= fault_time[0] + WINDOW_S):
        tally.errors_outside_window += 1


async def _ledger(nc: nats.NATS, w: World, tally: Tally, *, settle_s: float = 0.0) -> None:
    """Charged spend and holds still open; waits up to ``settle_s`` for holds to close."""
    kv = await nc.jetstream().key_value(bucket_name(w.prefix, "ledger"))
    end = time.monotonic() + settle_s
    while True:
        try:
            entry = await kv.get(key_token(TENANT))
            rec = msgspec.json.decode(entry.value or b"{}", type=BudgetRecord)
        except Exception:
            rec = BudgetRecord()
        tally.charged_usd, tally.holds_open = rec.day_usd, len(rec.holds)
        if not rec.holds or time.monotonic() >= end:
            return
        await asyncio.sleep(0.2)


async def _client(url: str) -> nats.NATS:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.25)
    await wait_for_jetstream(nc)
    return nc


async def _lead(nc: nats.NATS, w: World, stream: str, k: int) -> None:
    """Make node ``k`` the leader of ``stream`` (a stepdown naming the preferred node; repeated)."""
    assert w.cluster is not None
    want = w.cluster.nodes[k].name
    for _ in range(30):
        if await stream_leader(nc, stream) == want:
            return
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
                             msgspec.json.encode({"placement": {"preferred": want}}), timeout=5)
        await asyncio.sleep(1.0)
    raise RuntimeError(f"{stream} would not move its leader to {want}")


async def node_kill(*, rate: float = 40, duration_s: float = 30, hard_ms: int = 30000, delay_ms: float = 20,
                    with_orchestrator: bool = False) -> Tally:
    """kill -9 the NATS node leading the ledger's stream, under budgeted load, on a 3-node cluster.
    The orchestrator and the pool host connect to node 0, the client to node 1 (a client whose own
    server dies loses its requests: NATS request-reply is at most once). The ledger is led by node
    2, a pure state fault; ``with_orchestrator``: by node 0, so the orchestrator and pool host lose
    their connection too."""
    target = 0 if with_orchestrator else 2
    tally = Tally("NATS node kill -9: ledger leader" + (" + orchestrator's node" if with_orchestrator else ""))
    with world(nodes=3) as w:
        assert w.cluster is not None
        node0 = w.urls[:1]
        w.start("pool", "pool", [echo_pool("echo/a", delay_ms)], nats_urls=node0)
        w.start("up", "up", [], nats_urls=node0)
        w.wait_ready()
        nc = await _client(w.urls[1])
        try:
            await _lead(nc, w, f"KV_{bucket_name(w.prefix, 'ledger')}", target)

            async def fault() -> None:
                node = w.cluster.nodes[target]  # type: ignore[union-attr]
                assert node.proc is not None
                node.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(node.proc.wait)
            await _load(nc, w, tally, rate=rate, duration_s=duration_s, hard_ms=hard_ms,
                        fault_at_s=_fault_at(duration_s, rate), fault=fault)
            await _ledger(nc, w, tally, settle_s=10)
        finally:
            await nc.close()
    return tally


async def orchestrator_kill(*, rate: float = 40, duration_s: float = 30, hard_ms: int = 30000,
                            delay_ms: float = 300, nodes: int = 1) -> Tally:
    """kill -9 one of two `homeskillet up` processes sharing the NATS server(s), under load; the pool
    host is a third process. Its accepted queries must be answered by the survivor."""
    tally = Tally(f"orchestrator kill -9 (1 of 2), {nodes} node{'s' if nodes > 1 else ''}")
    with world(nodes=nodes) as w:
        w.start("pool", "pool", [echo_pool("echo/a", delay_ms)])
        a, b = w.start("up-a", "up", []), w.start("up-b", "up", [])
        w.wait_ready()
        nc = await _client(w.urls[0])
        try:
            async def fault() -> None:
                a.proc.send_signal(signal.SIGKILL)  # now, not from a thread that may start late
                await asyncio.to_thread(a.proc.wait)
            await _load(nc, w, tally, rate=rate, duration_s=duration_s, hard_ms=hard_ms,
                        fault_at_s=_fault_at(duration_s, rate), fault=fault)
            await _ledger(nc, w, tally)
        finally:
            await nc.close()
        tally.taken_over = b.events("parked_query_taken_over")
        tally.notes.append(f"the survivor took over {tally.taken_over} queries")
    return tally


async def orchestrator_pause(*, rate: float = 40, duration_s: float = 30, hard_ms: int = 30000,
                             delay_ms: float = 300, pause_s: float = 6.0) -> Tally:
    """SIGSTOP one of two `homeskillet up` processes for ``pause_s`` (3 claim TTLs), then SIGCONT:
    alive but stalled. The peer takes its queries over; once resumed it must yield them (no
    second answer, no second charge)."""
    tally = Tally(f"orchestrator paused {pause_s:g} s (SIGSTOP, 1 of 2), 1 node")
    with world(nodes=1) as w:
        w.start("pool", "pool", [echo_pool("echo/a", delay_ms)])
        a, b = w.start("up-a", "up", []), w.start("up-b", "up", [])
        w.wait_ready()
        nc = await _client(w.urls[0])
        try:
            async def fault() -> None:
                a.proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(pause_s)
                a.proc.send_signal(signal.SIGCONT)
            await _load(nc, w, tally, rate=rate, duration_s=duration_s, hard_ms=hard_ms,
                        fault_at_s=_fault_at(duration_s, rate), fault=fault)
            await _ledger(nc, w, tally, settle_s=5)
        finally:
            await nc.close()
        tally.taken_over = b.events("parked_query_taken_over")
        tally.notes.append(f"the peer took over {tally.taken_over}; the paused one yielded "
                           f"{a.events('query_yielded_to_peer') + a.events('query_taken_by_peer')}")
    return tally


async def pool_kill(*, rate: float = 40, duration_s: float = 30, hard_ms: int = 30000,
                    delay_ms: float = 50) -> Tally:
    """kill -9 one of two pool-host processes (same pool class) under load, restart it later."""
    tally = Tally("pool host kill -9 and restart, 1 node")
    with world(nodes=1) as w:
        pools = [echo_pool("echo/a", delay_ms), echo_pool("echo/b", delay_ms)]
        w.start("pool-a", "pool", pools[:1])
        w.start("pool-b", "pool", pools[1:])
        w.start("up", "up", [])
        w.wait_ready()
        nc = await _client(w.urls[0])
        try:
            async def fault() -> None:
                w.children["pool-a"].proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(w.children["pool-a"].proc.wait)
                await asyncio.sleep(duration_s / 3)
                await asyncio.to_thread(lambda: w.start("pool-a2", "pool", pools[:1]).wait_ready())
            await _load(nc, w, tally, rate=rate, duration_s=duration_s, hard_ms=hard_ms,
                        fault_at_s=_fault_at(duration_s, rate), fault=fault)
            await _ledger(nc, w, tally, settle_s=5)
        finally:
            await nc.close()
    return tally


if __name__ == "__main__":  # a quick look: python bench/chaos/faults.py
    os.environ.setdefault("HOMESKILLET_LOG_LEVEL", "WARNING")
    for f in (orchestrator_kill, node_kill, pool_kill):
        print(asyncio.run(f(duration_s=6, rate=20)).row())  # type: ignore[operator]
