"""The ``homeskillet replay`` and ``homeskillet simulate`` commands: load, run, report, print the path.

``simulate`` runs Homeskillet's covenant negotiation and, by default, the three naive baselines on
the same scenario and seed, in parallel processes (``--jobs``), with one progress bar per policy.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import queue
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import msgspec

from ..errors import ExtraMissing
from .compare import compare
from .policies import POLICIES
from .report import Report, build_report, write_report
from .scenario import Scenario, load_scenario, shorten

__all__ = ["add_parsers", "replay_command", "simulate_command"]


def _load(args: argparse.Namespace) -> Scenario:
    s = load_scenario(args.scenario)
    if args.short:
        s = shorten(s)
    if getattr(args, "scale", None):
        k = args.scale
        pools = [msgspec.structs.replace(p, accelerators=max(1, round(p.accelerators * k))) for p in s.pools]
        s = msgspec.structs.replace(s, pools=pools, max_queries=int(s.max_queries * k),
                                    arrivals=msgspec.structs.replace(s.arrivals, rate_qps=s.arrivals.rate_qps * k))
    if getattr(args, "duration", None):
        s = msgspec.structs.replace(s, duration_s=min(s.duration_s, args.duration),
                                    faults=[f for f in s.faults if f.at_s < args.duration])
    if getattr(args, "max_queries", None):
        s = msgspec.structs.replace(s, max_queries=args.max_queries)
    return s


def _out_dir(args: argparse.Namespace, s: Scenario, mode: str) -> Path:
    return Path(args.out) if args.out else Path("replay-out") / f"{s.name}-{mode}"


def _write(r: Report, out: Path, plots: bool) -> None:
    try:
        paths = write_report(r, out, plots=plots)
    except ExtraMissing as exc:
        paths = write_report(r, out, plots=False)
        print(f"note: no plots: {exc.message}", file=sys.stderr)
    failed = [c for c in r.checks if not c.ok]
    for c in r.checks:
        print(f"  {'ok    ' if c.ok else 'FAILED'} {c.name}: {c.detail}")
    print(f"cost ${r.cost.total_usd:,.4f} charged (${r.cost.per_day_usd:,.2f}/day"
          + (f", budget ${r.cost.budget_usd_per_day:,.2f}/day" if r.cost.budget_usd_per_day is not None else "")
          + f"); latency p50 {r.latency.p50_ms:,.1f} ms p95 {r.latency.p95_ms:,.1f} ms p99 {r.latency.p99_ms:,.1f} ms")
    for b in r.baselines:
        print(f"  baseline {b.policy:<13} ${b.cost.per_day_usd:,.2f}/day, p95 {b.latency.p95_ms:,.1f} ms, "
              f"{b.ledger.errors} errors, {sum(sum(v.broken_terms.values()) for v in b.covenants)} terms broken")
    print(f"report: {paths[0].parent / 'report.md'} ({', '.join(p.name for p in paths)})"
          + (f"; {len(failed)} check(s) failed" if failed else ""))


def _simulate_one(s: Scenario, policy: str, progress: Any) -> Report:
    from .simulate import simulate

    def tick(t: float, n: int) -> None:
        if progress is not None:
            progress.put((policy, t, n))

    return build_report(simulate(s, policy_name=policy, progress=tick))


def simulate_command(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    s = _load(args)
    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    t0 = time.perf_counter()
    reports: dict[str, Report] = {}
    with multiprocessing.Manager() as manager, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[queries]:>12,} queries"), TimeElapsedColumn(),
            disable=args.quiet) as bar:
        updates = manager.Queue()
        tasks = {p: bar.add_task(f"{s.name} · {p}", total=s.duration_s, queries=0) for p in policies}
        with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(policies)))) as pool:
            futures = {p: pool.submit(_simulate_one, s, p, updates) for p in policies}
            while not all(f.done() for f in futures.values()):
                try:
                    while True:
                        p, t, n = updates.get(timeout=0.2)
                        bar.update(tasks[p], completed=min(t, s.duration_s), queries=n)
                except queue.Empty:
                    pass
            for p, f in futures.items():
                reports[p] = f.result()
                bar.update(tasks[p], completed=s.duration_s)
    main = reports.get("covenant") or reports[policies[0]]
    main.baselines = [r for p, r in reports.items() if r is not main]
    print(f"simulated {s.duration_s:,.0f} s of '{s.name}' ({main.ledger.sent:,} queries, policies: "
          f"{', '.join(policies)}) in {time.perf_counter() - t0:,.1f} s of wall time")
    _write(main, _out_dir(args, s, "virtual"), not args.no_plots)
    return 0 if main.ok or not args.check else 1


def replay_command(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .driver import replay_variants

    s = _load(args)
    expected = s.max_queries or int(s.arrivals.rate_qps * s.duration_s) or None
    variants = [s.reference(), *(v.name for v in s.variants if v.name != s.reference())] if s.variants else [""]
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[sent]:>8,} sent"),
                  TextColumn("{task.fields[done]:>8,} done"), TimeElapsedColumn(), disable=args.quiet) as bar:
        tasks = {v: bar.add_task(f"{s.name}{' · ' + v if v else ''} · live over {args.target}", total=expected,
                                 sent=0, done=0) for v in variants}

        def progress(variant: str, sent: int, done: int, t: float) -> None:
            bar.update(tasks[variant], completed=done, sent=sent, done=done)

        runs = asyncio.run(replay_variants(s, target=args.target, url=args.url, prefix=args.prefix,
                                           token=args.token, policy=args.policy, progress=progress))
    r = compare(runs) if s.variants else build_report(runs[0])
    wall = sum(o.wall_s for o in runs)
    print(f"replayed {s.duration_s:,.1f} s of '{s.name}' live ({r.ledger.sent:,} queries"
          + (f" × {len(runs)} variants" if s.variants else "") + f") in {wall:,.1f} s")
    for v in r.comparison:
        print(f"  variant {v.variant:<20} ${v.cost_usd:,.6f} ({v.cost_ratio:.3f}×), p99 {v.latency.p99_ms:,.1f} ms "
              f"({v.p99_ratio:.3f}×), agreement {v.agreement:.3f}, kept cheap {v.kept_cheap}"
              + (f" (agreement {v.agreement_kept:.3f})" if v.agreement_kept is not None else ""))
    _write(r, _out_dir(args, s, "live"), not args.no_plots)
    return 0 if r.ok or not args.check else 1


def add_parsers(sub: Any) -> None:
    """The ``replay`` and ``simulate`` subcommands (added to ``homeskillet``'s parser)."""

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("scenario", help="a scenario file, e.g. scenarios/chatbot.toml")
        sp.add_argument("--short", action="store_true", help="the scenario's [short] form (seconds)")
        sp.add_argument("--scale", type=float, help="multiply the arrival rate and the fleet")
        sp.add_argument("--duration", type=float, help="stop the scenario after this many seconds")
        sp.add_argument("--max-queries", type=int, help="send at most this many queries")
        sp.add_argument("--out", help="report directory (default: replay-out/<scenario>-<mode>)")
        sp.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
        sp.add_argument("--check", action="store_true", help="exit 1 when a check of the scenario's [expect] fails")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    rp = sub.add_parser("replay", help="drive a scenario's traffic against a live Homeskillet, then report")
    common(rp)
    rp.add_argument("--target", choices=["nats", "http", "mcp"], default="nats")
    rp.add_argument("--url", help="a running deployment: NATS URL(s) for --target nats, the HTTP API's base URL "
                    "(http(s)://host:port) for --target http or mcp; default: start the embedded stack and fleet")
    rp.add_argument("--prefix", default="hs", help="the running deployment's subject prefix")
    rp.add_argument("--token", help="a bearer token (HTTP API or MCP with auth; MCP also reads HOMESKILLET_TOKEN) "
                    "or NATS token for a running deployment")
    rp.add_argument("--policy", choices=POLICIES, default="covenant")
    sp = sub.add_parser("simulate", help="run a scenario in virtual time (capacity planning), then report")
    common(sp)
    sp.add_argument("--policy", choices=[*POLICIES, "all"], default="all",
                    help="covenant (Homeskillet's negotiation), a naive baseline, or all of them (default)")
    sp.add_argument("--jobs", type=int, default=2, help="policies simulated at once (processes)")
