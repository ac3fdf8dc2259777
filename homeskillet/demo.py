"""``homeskillet demo``: the whole system in one process, on one loop, with no network and no keys.

It starts the embedded nats-server, simulators of hosted.ai, Vast.ai and OpenRouter and an Ollama
node (``homeskillet node``, the real local model inside) on loopback ports (``demo_fleet``), builds pools on the real
connectors, serves a batch of queries chosen so that every kind of decision shows once, reserves
capacity and serves on it, then stops everything and checks that no provider still holds an
allocation. ``demo_table`` prints what happened. Exit status 0 means every check below held.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from .cli import warm_local
from .config import Settings
from .demo_fleet import Fleet, Leftovers
from .demo_table import print_report
from .errors import HomeskilletError
from .gateway import error_reply
from .runtime import Runtime
from .subjects import Subjects
from .wire import (
    Answer,
    CallForProposals,
    ErrorReply,
    Query,
    Reservation,
    ReserveRequest,
    Verdict,
    decode_agent_msg,
    decode_verdicts,
)

__all__ = ["BATCH", "PROVIDERS", "RESERVATION", "DemoItem", "DemoRun", "Row", "check", "main", "run_demo"]

PROVIDERS = ("hostedai", "vastai", "openrouter", "ollama", "mlx")


class DemoItem(msgspec.Struct, frozen=True, kw_only=True):
    shows: str  # what this query demonstrates, printed beside its rows
    query: dict[str, Any]  # Query fields


BATCH: tuple[DemoItem, ...] = (
    DemoItem(shows="default covenant → hosted.ai standard vGPU",
             query={"prompt": "What does Homeskillet do with a query?"}),
    DemoItem(shows="three questions: split, struck, fused",
             query={"prompt": "What is a strike? How are covenants negotiated? Why fuse the results?",
                    "covenant": "gemma-2b"}),
    DemoItem(shows="Contract Net round (call for proposals)",
             query={"prompt": "Review this contract clause for risks.", "covenant": "qwen-14b",
                    "overrides": {"negotiation": "cfp"}}),
    DemoItem(shows="qwen-70b needs 80 GB → hosted.ai dedicated",
             query={"prompt": "Summarise the design of a 70B model deployment.", "model": "qwen-70b"}),
    DemoItem(shows="cheapest capacity first: evicted mid-inference, re-struck",
             query={"prompt": "Tag this ticket by urgency: the printer is on fire.", "covenant": "gemma-2b",
                    "overrides": {"resources": {"pool_class": "preemptible"}}}),
    DemoItem(shows="hourly cap $1.50: hosted.ai too dear → Vast.ai",
             query={"prompt": "Draft a migration plan for our GPU fleet.", "covenant": "qwen-32b",
                    "overrides": {"cost": {"max_usd_per_hour": 1.5}}}),
    DemoItem(shows="pool class api: a hosted model, billed per token",
             query={"prompt": "Explain tensor parallelism in two sentences.", "model": "qwen-70b",
                    "overrides": {"resources": {"pool_class": "api"}}}),
    DemoItem(shows="a cost ceiling no paid pool meets → the Ollama node",
             query={"prompt": "Say hello from the desk.", "covenant": "gemma-2b", "max_tokens": 24,
                    "overrides": {"cost": {"max_usd_per_request": 1e-6}}}),
    DemoItem(shows="no A100 SXM anywhere → degraded to smollm2-135m on MLX",
             query={"prompt": "What is the capital of France?", "covenant": "mistral-7b",
                    "max_tokens": 24, "overrides": {"resources": {"gpu_models": ["A100 SXM"]}}}),
    DemoItem(shows="a covenant no pool can meet → explicit error",
             query={"prompt": "Run a 70B model for almost nothing.", "model": "qwen-70b",
                    "overrides": {"cost": {"max_usd_per_request": 1e-9}, "fallback": {"steps": ["fail"]}}}),
)
RESERVATION = ReserveRequest(provider="hostedai", pool_id="standard-us-east", model="gemma-2b", duration_s=600,
                             max_cost_per_hr=1.0, tenant="acme", metadata={"workload_id": "demo-batch"})
RESERVED_QUERY = "Summarise today's support queue."


class Row(msgspec.Struct, kw_only=True):
    """One query's outcome as the report shows it."""

    shows: str
    outcome: Answer | ErrorReply
    prompt: str = ""
    contract_net: bool = False  # a call for proposals for this query was seen on hs.cfp.>


class DemoRun(msgspec.Struct, kw_only=True):
    """Everything the report prints and the checks read."""

    rows: list[Row]
    reservation: Reservation
    verdicts: list[Verdict]
    ledger_usd: float
    leftovers: list[Leftovers]
    pools: list[str]
    urls: dict[str, str]
    wall_s: float


class _Watch:
    """Reads hs.cfp.> and hs.events.verdict.> beside the runtime: what actually went over NATS."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self.nc, self.subjects = nc, subjects
        self.cfp_queries: set[str] = set()
        self.verdicts: list[Verdict] = []
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        self._subs = [await self.nc.subscribe(self.subjects.cfp_all),
                      await self.nc.subscribe(self.subjects.verdict_all)]

    async def collect(self) -> None:
        """Take what has arrived: after a flush every message published before it is queued here."""
        await self.nc.flush()
        cfps, verdicts = self._subs
        for data in await _drain(cfps):
            m = decode_agent_msg(data)
            if isinstance(m, CallForProposals):
                self.cfp_queries.add(m.query_id)
        self.verdicts += [v for data in await _drain(verdicts) for v in decode_verdicts(data)]

    async def stop(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()


async def _drain(sub: Subscription) -> list[bytes]:
    """The messages already queued on ``sub`` (none of these reads waits)."""
    return [(await sub.next_msg(timeout=1.0)).data for _ in range(sub.pending_msgs)]


async def _serve(rt: Runtime, watch: _Watch) -> tuple[list[Row], Reservation]:
    assert rt.gateway is not None
    rows: list[Row] = []
    for item in BATCH:
        query = msgspec.convert(item.query, Query)
        outcome: Answer | ErrorReply
        try:
            outcome = await rt.ask(query)
        except HomeskilletError as exc:
            outcome = error_reply(exc, query.query_id)
        rows.append(Row(shows=item.shows, outcome=outcome, prompt=query.prompt or ""))
    # A reservation: hold a hosted.ai vGPU, serve on it, release it and read the provider's bill.
    res = await rt.gateway.reserve(RESERVATION)
    answer = await rt.gateway.infer_on(res.reservation_id, res.tenant, Query(prompt=RESERVED_QUERY))
    rows.append(Row(shows=f"reservation {res.reservation_id[:8]}: reserve → query → release", outcome=answer,
                    prompt=RESERVED_QUERY))
    released = await rt.gateway.release(res.reservation_id, res.tenant)
    await watch.collect()
    for row in rows:
        row.contract_net = row.outcome.query_id in watch.cfp_queries
    return rows, released


async def run_demo() -> DemoRun:
    """Start the fleet and a runtime on it, serve the batch, stop everything; return what happened."""
    t0 = time.perf_counter()
    async with Fleet.running() as fleet:
        pools = fleet.pools()
        rt = Runtime(Settings(pools=pools))
        try:  # stopped even when start fails half-way: its actor threads would keep the process alive
            await rt.start()
            await warm_local(rt)  # the local model loads (converted on first use) before the batch
            if rt.disabled:
                raise HomeskilletError("the demo needs every pool; disabled: "
                                       + "; ".join(f"{p}: {why}" for p, why in rt.disabled.items()))
            assert rt.nc is not None
            watch = _Watch(rt.nc, rt.subjects)
            await watch.start()
            rows, reservation = await _serve(rt, watch)
            await watch.stop()
            report = await rt.ledger_report()
        finally:
            await rt.stop()
        # The runtime has stopped: its connectors released their standing allocations.
        leftovers = fleet.leftovers()
        urls = dict(fleet.urls)
    return DemoRun(rows=rows, reservation=reservation, verdicts=watch.verdicts,
                   ledger_usd=sum(report.spent_usd.values()), leftovers=leftovers, pools=[p.name for p in pools],
                   urls=urls, wall_s=time.perf_counter() - t0)


def check(run: DemoRun) -> list[str]:
    """What the demo promises; each broken promise is one sentence (empty: all held)."""
    problems = []
    answers = [r.outcome for r in run.rows if isinstance(r.outcome, Answer)]
    errors = [r.outcome for r in run.rows if isinstance(r.outcome, ErrorReply)]
    served = {f.pool.split("/", 1)[0] for a in answers for f in a.fragments}
    if missing := [p for p in PROVIDERS if p not in served]:
        problems.append(f"no fragment was served by {', '.join(missing)}")
    if len(errors) != 1 or errors[0].term != "cost.max_usd_per_request":
        problems.append(f"expected exactly one explicit error naming cost.max_usd_per_request, got "
                        f"{[(e.code, e.term) for e in errors]}")
    if not any("preempted" in t for a in answers for f in a.fragments for t in f.tried):
        problems.append("no fragment shows the preemption and its re-strike")
    if not any(r.contract_net for r in run.rows):
        problems.append("no call for proposals went out")
    if run.reservation.billed_usd is None or run.reservation.status != "released":
        problems.append("the reservation was not released with a bill")
    if live := [f"{x.provider}: {x.live}" for x in run.leftovers if x.live]:
        problems.append(f"providers still hold allocations after the demo: {', '.join(live)}")
    charged = sum(v.cost_usd for v in run.verdicts)
    if abs(charged - run.ledger_usd) > 1e-9:
        problems.append(f"ledger ${run.ledger_usd:.9f} disagrees with the verdicts' ${charged:.9f}")
    return problems


async def main() -> int:
    run = await run_demo()
    problems = check(run)
    print_report(run, problems)
    return 1 if problems else 0
