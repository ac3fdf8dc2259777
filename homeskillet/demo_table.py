"""The demo's report: what Homeskillet is, the fleet, one row per fragment (pool, step, cost, latency,
terms kept, why that pool won), the reservation, what the providers still hold, and totals."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .wire import Answer, ErrorReply

if TYPE_CHECKING:
    from .demo import DemoRun

__all__ = ["print_report"]

INTRO = """\
[bold]Homeskillet[/bold] serves AI inference across mixed compute. A query is split into fragments; for each
fragment the pools that could serve it bid under a [bold]covenant[/bold] (model, VRAM, latency, cost and fallback
terms), the best bid wins, the fragment is [bold]struck[/bold] over NATS on that pool, failures fall back along the
covenant's chain, and the results are [bold]fused[/bold] into one answer with an honest bill.

This demo runs all of it in one process with no network and no keys: an embedded nats-server,
simulators speaking the real APIs of hosted.ai (vGPU tiers), Vast.ai (GPU market) and OpenRouter
(hosted models), an Ollama node (`homeskillet node`: Ollama's API over the real local model), and the
local model itself (SmolLM2-135M-Instruct on mlx-lm). The simulators' answers are seeded filler words,
marked [yellow]simulated[/yellow]; the node's and mlx/local's are the real model's, marked [green]real model[/green]."""

# Providers whose answers come from a real model in this process; every other pool is a simulator.
REAL = {"mlx": "real model: SmolLM2-135M-Instruct, mlx-lm", "ollama": "real model: SmolLM2-135M via the Ollama API"}


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def _pools_table(run: DemoRun) -> Table:
    t = Table(title="The fleet: each pool through its real connector", title_justify="left")
    for col in ("pool", "talks to"):
        t.add_column(col)
    names = {"hostedai": "hosted.ai simulator", "vastai": "Vast.ai simulator", "openrouter": "OpenRouter simulator",
             "ollama": "homeskillet node (Ollama API)", "mlx": "MLX in this process"}
    for pool in run.pools:
        provider = pool.split("/", 1)[0]
        where = run.urls.get(provider, "")
        t.add_row(pool, f"{names.get(provider, provider)} {where}".strip())
    return t


def _fragments_table(run: DemoRun) -> Table:
    """A bold line per query (what it shows), then one row per fragment."""
    t = Table(title="One row per fragment: where it ran and why", title_justify="left")
    t.add_column("#", no_wrap=True)
    t.add_column("pool", no_wrap=True)
    t.add_column("step", overflow="fold", max_width=18)
    t.add_column("cost $", no_wrap=True, justify="right")
    t.add_column("ms", no_wrap=True, justify="right")
    t.add_column("terms", overflow="fold", max_width=10)
    t.add_column("why this pool won (the negotiation's words)", overflow="fold", ratio=1)
    for i, row in enumerate(run.rows, 1):
        o = row.outcome
        covenant = f"covenant {o.covenant}" if isinstance(o, Answer) else ""
        t.add_row(f"[bold]{i}[/bold]", covenant, "", "", "", "", f"[bold cyan]{escape(row.shows)}[/bold cyan]")
        if isinstance(o, ErrorReply):
            t.add_row("", f"[red]explicit error {o.code}[/red]", "-", "-", "-", "-",
                      f"[red]unmet {escape(o.term or '?')}[/red]: {escape(o.message)}", end_section=True)
            continue
        for j, f in enumerate(o.fragments):
            step = f.step + (f" (degraded to {f.model})" if f.degraded else "")
            terms = "kept" if f.kept else "broke " + ", ".join(f.broken_terms)
            why = ("[bold]won a Contract Net round[/bold]: " if row.contract_net else "") + escape(f.why)
            if f.tried:
                why += "\n[yellow]after: " + escape("; ".join(f.tried)) + "[/yellow]"
            t.add_row(f"  .{f.index}" if len(o.fragments) > 1 else "", f.pool, escape(step), f"{f.cost_usd:.7f}",
                      f"{f.latency_ms:.1f}", terms, why, end_section=j == len(o.fragments) - 1)
    return t


def _answers_table(run: DemoRun) -> Table:
    """Each answer's text, labelled: a real model's words, or a simulator's seeded filler."""
    t = Table(title="The answers: real where a real model served, simulated elsewhere", title_justify="left")
    t.add_column("#", no_wrap=True)
    t.add_column("source", overflow="fold", max_width=28)
    t.add_column("prompt", overflow="fold", ratio=1)
    t.add_column("answer", overflow="fold", ratio=2)
    for i, row in enumerate(run.rows, 1):
        o = row.outcome
        if not isinstance(o, Answer):
            continue
        providers = {f.pool.split("/", 1)[0] for f in o.fragments}
        real = [REAL[p] for p in sorted(providers) if p in REAL]
        label = (f"[green]{escape('; '.join(real))}[/green]" if real and len(real) == len(providers)
                 else "[yellow]simulated[/yellow] (seeded filler)")
        text = o.text if len(o.text) <= 240 else o.text[:240] + "…"
        t.add_row(str(i), label, escape(row.prompt), escape(text), end_section=True)
    return t


def _leftovers_table(run: DemoRun) -> Table:
    t = Table(title="The providers after shutdown (every allocation released)", title_justify="left")
    for col in ("provider", "allocations made", "still live", "billed $", "detail"):
        t.add_column(col)
    for x in run.leftovers:
        live = f"[green]{x.live}[/green]" if x.live == 0 else f"[red]{x.live}[/red]"
        t.add_row(x.provider, str(x.made), live, f"{x.billed_usd:.6f}", x.detail)
    return t


def _summary(run: DemoRun) -> list[str]:
    """The story in a few lines: who served, what failed over, what degraded, what was refused."""
    answers = [r.outcome for r in run.rows if isinstance(r.outcome, Answer)]
    frags = [f for a in answers for f in a.fragments]
    by_provider: dict[str, int] = {}
    for f in frags:
        by_provider[f.pool.split("/", 1)[0]] = by_provider.get(f.pool.split("/", 1)[0], 0) + 1
    lines = ["served by: " + ", ".join(f"{p} ×{n}" for p, n in by_provider.items())]
    for v in (v for v in run.verdicts if v.preempted):
        again = next((f.pool for f in frags if any(v.pool in t and "preempted" in t for t in f.tried)), "?")
        lines.append(f"failover: {v.pool} was evicted mid-inference (billed ${v.cost_usd:.6f} under the evicted "
                     f"strike); the fragment was re-struck on {again}")
    lines += [f"degraded: covenant {a.covenant} served by {f.pool} with {f.model}"
              for a in answers for f in a.fragments if f.degraded]
    lines += [f"explicit error: {r.outcome.code}, unmet {r.outcome.term}" for r in run.rows
              if isinstance(r.outcome, ErrorReply)]
    return lines


def print_report(run: DemoRun, problems: list[str]) -> None:
    console = _console()
    console.print(INTRO)
    console.print()
    console.print(_pools_table(run))
    console.print(_fragments_table(run))
    console.print(_answers_table(run))
    answers = [r.outcome for r in run.rows if isinstance(r.outcome, Answer)]
    res = run.reservation
    console.print(f"\nReservation {res.reservation_id}: {res.pool}, allocation {res.allocation_id}, "
                  f"${res.usd_per_hour:.2f}/h, status {res.status}; its strikes cost $0 each, and hosted.ai billed "
                  f"${res.billed_usd or 0:.6f} for the allocation at release.")
    console.print(_leftovers_table(run))
    for line in _summary(run):
        console.print(escape(line), soft_wrap=True)
    evicted = sum(v.cost_usd for v in run.verdicts if v.preempted)
    in_answers = sum(a.cost_usd for a in answers)
    frags = sum(len(a.fragments) for a in answers)
    errors = len(run.rows) - len(answers)
    agree = "agrees" if not any("ledger" in p for p in problems) else "[red]DISAGREES[/red]"
    console.print(f"totals: {len(run.rows)} queries, {len(answers)} answered, {errors} explicit error(s), {frags} "
                  f"fragments; ${in_answers:.6f} in answers + ${evicted:.6f} billed for the evicted part = ledger "
                  f"${run.ledger_usd:.6f} ({agree} with the verdicts on hs.events); reservation billed "
                  f"${res.billed_usd or 0:.6f}; {run.wall_s:.1f} s wall time, everything included.", soft_wrap=True)
    for p in problems:
        console.print(f"[red]demo check failed: {escape(p)}[/red]")
