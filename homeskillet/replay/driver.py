"""``homeskillet replay``: drive a scenario's traffic, open loop, against a live Homeskillet over
NATS (``hs.query``), the HTTP API (``POST /api/v1/query``) or MCP (the ``query`` tool, ``mcp_target.py``).

Queries go out at the scenario's arrival times whether or not earlier ones were answered (open
loop: a slow system meets more load, not less), the same way any client asks. The run is bounded
in count (``max_queries``) and time (the scenario's duration, then at most the longest hard
deadline for the last answers). Every query ends as an answer, an explicit error (an
``ErrorReply``: with the service-error headers, the HTTP status, or as an MCP tool error), or, if
nothing came back in time, as *lost*; the report's ledger must balance with nothing lost.

Against the embedded stack the fault timeline is enacted on the real parts: an outage, a latency
spike or a preemption storm on the pool's engine, a worker stopped mid-strike and restarted, a NATS
node SIGKILLed under the pools it serves and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import nats
from nats.aio.client import Client as NATS

from ..auth import UNNAMED_TENANT
from ..covenant import CovenantBook, fallback_chain, parse_step
from ..errors import HomeskilletError
from ..wire import Answer, Covenant, ErrorReply, Query, encode
from .arrivals import ArrivalStream
from .mcp_target import McpSender
from .report import ERROR_KINDS, Observations, PoolUsage, Series
from .scenario import Fault, Scenario, describe, with_variant
from .stack import LiveStack

__all__ = ["TARGETS", "HttpSender", "NatsSender", "kept_cheap", "prompt_for", "replay", "replay_variants"]

TARGETS = ("nats", "http", "mcp")
_WORDS = ("the ask one try map row fit key age sum gap bid lot run set top way fix log use new old big own net "
          "low far end add cut mix way sky ice oak elm fog").split()
_reply = msgspec.json.Decoder(Answer | ErrorReply)


def prompt_for(rng: random.Random, tokens: int, questions: int) -> str:
    """A prompt of about ``tokens`` tokens holding ``questions`` questions (the analysis splits them)."""
    per = max(1, tokens // questions)
    return " ".join(" ".join([*(rng.choice(_WORDS) for _ in range(per - 1)), "why?"]) for _ in range(questions))


Reply = Answer | ErrorReply | None  # None: nothing came back from Homeskillet (lost)


class NatsSender:
    """Queries as ``<prefix>.query`` requests (the ``homeskillet`` micro service)."""

    def __init__(self, nc: NATS, subject: str) -> None:
        self.nc, self.subject = nc, subject

    async def __call__(self, query: Query, timeout: float) -> Reply:
        try:
            msg = await self.nc.request(self.subject, encode(query), timeout=timeout)
            reply: Answer | ErrorReply = _reply.decode(msg.data)
            return reply
        except (TimeoutError, nats.errors.Error, msgspec.DecodeError, msgspec.ValidationError):
            return None


class HttpSender:
    """Queries as ``POST /api/v1/query`` (the Homeskillet HTTP API: an Answer, or an ErrorReply
    with the HTTP status)."""

    def __init__(self, base_url: str, token: str | None = None) -> None:
        headers = {"content-type": "application/json"}
        self.token = token
        if token:
            headers["authorization"] = f"Bearer {token}"
        # Open loop: as many connections as queries in flight.
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))

    async def __call__(self, query: Query, timeout: float) -> Reply:
        try:
            if self.token:  # the server acts for the token's tenant and refuses any other named (403)
                query = msgspec.structs.replace(query, tenant=UNNAMED_TENANT)
            r = await self.client.post("/api/v1/query", content=encode(query), timeout=timeout)
            reply: Answer | ErrorReply = _reply.decode(r.content)
            return reply
        except (httpx.HTTPError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def close(self) -> None:
        await self.client.aclose()


Sender = Callable[[Query, float], Awaitable[Reply]]


@dataclass
class _Row:
    t: float
    cls: int
    latency_ms: float = float("nan")
    cost: float = 0.0
    error: str = "lost"
    fallback: bool = False
    alloc_ms: float | None = None
    frags: list[tuple[str, float, int, int, list[str]]] = field(default_factory=list)  # pool, ms, in, out, broken
    text: str = ""
    kept_cheap: bool = False


def kept_cheap(answer: Answer, cheap_tiers: frozenset[str]) -> bool:
    """Whether a cascade kept every part of ``answer`` at one of its tiers below the last (a part
    no tier could serve went down the fallback chain, and counts as not kept cheap)."""
    steps = [f.step for f in answer.fragments if f.role == "cascade" and f.contributed]
    return bool(steps) and all(s in cheap_tiers for s in steps)


class _Driver:
    def __init__(self, s: Scenario, send: Sender, book: CovenantBook,
                 progress: Callable[[int, int, float], None] | None) -> None:
        self.s, self.send, self.progress = s, send, progress
        self.rng = random.Random(s.seed)
        self.covs: dict[tuple[int, int], Covenant] = {}
        for ci, c in enumerate(s.classes):
            for ti, tpl in enumerate(c.templates):
                self.covs[ci, ti] = book.resolve(Query(covenant=c.covenant, overrides=c.overrides or None,
                                                       max_tokens=tpl.max_tokens))
        self.timeout = max(cov.qos.hard_deadline_ms for cov in self.covs.values()) / 1000.0 + 5.0
        self.rows: list[_Row] = []
        self.done = 0
        self.started = 0.0  # monotonic time the run began: engine spans are plotted against it
        self.enacted: list[str] = []

    async def _one(self, row: _Row, at: float, query: Query, primary: str, cheap_tiers: frozenset[str]) -> None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        t0 = time.monotonic()
        reply = await self.send(query, self.timeout)
        row.latency_ms = (time.monotonic() - t0) * 1000.0
        match reply:
            case Answer():
                row.error, row.cost = "", reply.cost_usd
                row.fallback = any(f.step != primary or f.tried for f in reply.fragments)
                row.alloc_ms = max(0.0, reply.latency_ms - max(f.latency_ms for f in reply.fragments))
                row.frags = [(f.pool, f.latency_ms, f.prompt_tokens, f.completion_tokens, f.broken_terms)
                             for f in reply.fragments]
                row.text = reply.text
                row.kept_cheap = bool(cheap_tiers) and kept_cheap(reply, cheap_tiers)
            case ErrorReply():
                row.error = reply.code
        self.done += 1

    async def run(self, stack: LiveStack | None) -> float:
        stream = ArrivalStream(self.s)
        tasks: set[asyncio.Task[None]] = set()
        start = self.started = time.monotonic()
        faults = asyncio.create_task(self._faults(stack, start)) if stack is not None else None
        now = 0.0
        while True:
            # Past the duration this takes every arrival left: a stalled loop must not drop the tail.
            batch = stream.take(now + 0.1)
            for i in range(len(batch)):
                ci, ti, q = int(batch.cls[i]), int(batch.tpl[i]), int(batch.questions[i])
                c = self.s.classes[ci]
                tpl = c.templates[ti]
                query = Query(tenant=self.s.tenants(c)[int(batch.tenant[i])], covenant=c.covenant,
                              overrides=c.overrides or None, max_tokens=tpl.max_tokens,
                              prompt=prompt_for(self.rng, tpl.prompt_tokens, q))
                row = _Row(t=float(batch.t[i]), cls=ci)
                self.rows.append(row)
                cov = self.covs[ci, ti]
                primary = str(fallback_chain(cov)[0])
                tiers = cov.strategy.cascade.tiers if cov.strategy.serve == "cascade" else []
                cheap = frozenset(str(parse_step(t)) for t in tiers[:-1])
                task = asyncio.create_task(self._one(row, start + row.t, query, primary, cheap))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if self.progress is not None:
                self.progress(len(self.rows), self.done, now)
            if stream.done(now):
                break
            await asyncio.sleep(0.05)
            now = time.monotonic() - start
        while tasks:  # the last answers, bounded by the longest hard deadline
            await asyncio.wait(set(tasks), timeout=0.2)
            if self.progress is not None:
                self.progress(len(self.rows), self.done, time.monotonic() - start)
        if faults is not None:
            faults.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await faults
        return time.monotonic() - start

    async def _faults(self, stack: LiveStack, start: float) -> None:
        events: list[tuple[float, Fault, bool]] = []
        for f in self.s.faults:
            events += [(f.at_s, f, True), (f.at_s + f.duration_s, f, False)]
        for at, f, begin in sorted(events, key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            await _enact(stack, f, begin)
            if begin:
                self.enacted.append(describe(f, time.monotonic() - start))


async def _enact(stack: LiveStack, f: Fault, begin: bool) -> None:
    engine = stack.engine(f.pool) if f.pool else None
    match f.kind:
        case "outage" if engine is not None and begin:
            engine.outage_until = time.monotonic() + f.duration_s
        case "latency_spike" if engine is not None and begin:
            engine.spike_until, engine.spike_factor = time.monotonic() + f.duration_s, f.factor
        case "preemption_storm" if begin:
            for fp in stack.s.pools:
                e = stack.engine(fp.name)
                if e is not None and fp.preemptible and (not f.pool or f.pool == fp.name):
                    e.storm(f.share)
        case "worker_kill":
            await (stack.kill_pool(f.pool) if begin else stack.start_pool(f.pool))
        case "nats_kill":
            await (stack.kill_node(f.node) if begin else stack.restart_node(f.node))


def _observations(s: Scenario, d: _Driver, stack: LiveStack | None, wall_s: float, ledger_usd: float | None,
                  by_pool: dict[str, float], policy: str) -> Observations:
    import numpy as np

    rows = d.rows
    kinds = list(ERROR_KINDS)
    for r in rows:
        if r.error not in kinds:
            kinds.append(r.error)
    nb = max(1, min(120, int(s.duration_s * 4)))
    series = Series(np.linspace(0.0, s.duration_s, nb + 1), len(s.pools))
    names = {p.name: i for i, p in enumerate(s.pools)}
    busy = [0.0] * len(s.pools)
    strikes = [0] * len(s.pools)
    broken: dict[tuple[int, str], int] = {}
    frags_ok = [0] * len(s.classes)
    tok_in = tok_out = 0
    for r in rows:
        if r.error:
            continue
        frags_ok[r.cls] += len(r.frags)
        end = r.t + r.latency_ms / 1000.0
        series.add_cost(np.array([end]), np.array([r.cost]))
        for pool, ms, pin, pout, terms in r.frags:
            tok_in, tok_out = tok_in + pin, tok_out + pout
            for term in terms:
                broken[r.cls, term] = broken.get((r.cls, term), 0) + 1
            if pool in names:
                i = names[pool]
                busy[i] += ms / 1000.0
                strikes[i] += 1
                if stack is None:  # a remote deployment: the answers' fragment latencies are all we see
                    series.add_busy(i, np.array([end - ms / 1000.0]), np.array([end]))
    pools = []
    for i, fp in enumerate(s.pools):
        es = stack.engines(fp.name) if stack is not None else []
        # The engines know how long strikes held a slot; answers alone include the wait for one.
        pools.append(PoolUsage(name=fp.name, simulates=fp.simulates, pool_class=fp.pool_class,
                               accelerators=fp.accelerators, capacity=fp.capacity,
                               strikes=sum(e.executed for e in es) if es else strikes[i],
                               failures=sum(e.failed for e in es), preemptions=sum(e.preempted for e in es),
                               lost=0, busy_s=sum(e.busy_s for e in es) if es else busy[i],
                               cost_usd=by_pool.get(fp.name, 0.0),
                               fleet_usd=fp.usd_per_hour * fp.accelerators * s.duration_s / 3600.0))
    if stack is not None:  # the engines' own spans: when each strike held a slot, waits excluded
        for i, fp in enumerate(s.pools):
            spans = np.array([span for e in stack.engines(fp.name) for span in e.spans]).reshape(-1, 2) - d.started
            series.add_busy(i, spans[:, 0], spans[:, 1])
    costs = np.array([r.cost for r in rows])
    alloc = np.array([r.alloc_ms for r in rows if r.alloc_ms is not None], dtype=np.float64)
    return Observations(
        scenario=s, mode="live", policy=policy, duration_s=s.duration_s, wall_s=wall_s,
        covenants=s.covenant_labels(),
        targets_ms=[float(d.covs[ci, 0].qos.latency_target_ms) for ci in range(len(s.classes))],
        t=np.array([r.t for r in rows]), cls=np.array([r.cls for r in rows], dtype=np.int16),
        latency_ms=np.array([r.latency_ms if not r.error else np.nan for r in rows]), cost_usd=costs,
        error=np.array([kinds.index(r.error) for r in rows], dtype=np.int16),
        fallback=np.array([r.fallback for r in rows], dtype=bool),
        ledger_usd=ledger_usd if ledger_usd is not None else float(costs.sum()), tokens_in=tok_in, tokens_out=tok_out,
        broken=broken, fragments_ok=frags_ok, pools=pools, series=series, alloc_ms=alloc, error_kinds=kinds,
        faults=d.enacted, texts=[r.text for r in rows], kept_cheap=np.array([r.kept_cheap for r in rows], dtype=bool))


async def replay(scenario: Scenario, *, target: str = "nats", url: str | None = None, prefix: str = "hs",
                 token: str | None = None, policy: str = "covenant", covenants: CovenantBook | None = None,
                 progress: Callable[[int, int, float], None] | None = None) -> Observations:
    """Run ``scenario`` live through ``target`` (the NATS service, the HTTP API or the MCP ``query``
    tool): against the embedded stack it starts (``url`` None) or a running deployment at ``url``."""
    if target not in TARGETS:
        raise HomeskilletError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if policy != "covenant":
        raise HomeskilletError(f"--policy {policy}: live replay runs Homeskillet's own negotiation only; compare "
                               "baselines in virtual time: homeskillet simulate SCENARIO --policy all")
    book = covenants or CovenantBook.load()
    if url is None:
        async with LiveStack(scenario, http=target != "nats") as stack:
            assert stack.query_side is not None
            async with _sender(scenario, target, stack.url if target == "nats" else stack.http_url,
                               stack.query_side.subjects.query, token) as send:
                d = _Driver(scenario, send, book, progress)
                wall = await d.run(stack)
            report = await stack.query_side.ledger_report()
            return _observations(scenario, d, stack, wall, sum(report.spent_usd.values()), dict(report.by_pool), policy)
    async with _sender(scenario, target, url, f"{prefix}.query", token) as send:
        d = _Driver(scenario, send, book, progress)
        wall = await d.run(None)
    return _observations(scenario, d, None, wall, None, {}, policy)


async def replay_variants(scenario: Scenario, *, progress: Callable[[str, int, int, float], None] | None = None,
                          **kw: Any) -> list[Observations]:
    """``replay`` once per variant of the scenario, the reference first, on the same seed and
    arrivals (so the same prompts, query by query). Each variant gets a fresh embedded stack
    (empty track records and caches); against a running deployment (``url``) they share its state.
    ``progress`` is told the variant with every update. No variants: one run, variant ""."""
    ref = scenario.reference()
    runs = []
    for name in [ref, *(v.name for v in scenario.variants if v.name != ref)]:
        tick = None if progress is None else functools.partial(progress, name)
        obs = await replay(with_variant(scenario, name) if name else scenario, progress=tick, **kw)
        obs.variant = name
        runs.append(obs)
    return runs


@contextlib.asynccontextmanager
async def _sender(s: Scenario, target: str, url: str, subject: str, token: str | None) -> AsyncIterator[Sender]:
    if target == "mcp":
        mcp = McpSender(url, token or os.environ.get("HOMESKILLET_TOKEN") or None)
        try:
            await mcp.start([t for c in s.classes for t in s.tenants(c)])
            yield mcp
        finally:
            await mcp.close()
        return
    if target == "http":
        http = HttpSender(url, token)
        try:
            yield http
        finally:
            await http.close()
        return
    nc = await nats.connect(servers=[u.strip() for u in url.split(",")], name="homeskillet-replay",
                            max_reconnect_attempts=-1, reconnect_time_wait=0.25,
                            **({"token": token} if token else {}))
    try:
        yield NatsSender(nc, subject)
    finally:
        await nc.close()
