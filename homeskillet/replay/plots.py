"""Replay report plots (PNG; the ``replay`` extra): latency percentiles, cost and utilisation over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ExtraMissing
from .report import Report

__all__ = ["write_plots"]


def write_plots(r: Report, out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ExtraMissing("replay plots", "replay") from None
    p = r.plots
    t = np.array(p.t_s) / (3600.0 if r.duration_s > 7200 else 1.0)
    unit = "h" if r.duration_s > 7200 else "s"
    paths = []
    specs = [("latency", "latency (ms)", {"p50": p.p50_ms, "p95": p.p95_ms, "p99": p.p99_ms}),
             ("cost", "cost charged per interval ($)", {"cost": p.cost_usd}),
             ("utilisation", "utilisation of pool capacity", p.utilisation)]
    for name, ylabel, lines in specs:
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
        for label, ys in lines.items():
            ax.plot(t, ys, label=label, linewidth=1.2)
        ax.set_xlabel(f"scenario time ({unit})")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{r.scenario}: {name} ({r.mode}, {r.policy})")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7, ncol=2)
        path = out / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
