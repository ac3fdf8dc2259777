"""Soak: does `homeskillet up` keep its memory bounded under steady load?

Starts `homeskillet up` (embedded NATS, its own data directory, the HTTP API on loopback for
`/metrics`; the default echo pools and a second standard pool, see HEDGE_POOL) in a child process
and drives `hs.query` open-loop at a fixed rate over NATS with a mix that touches every per-query
structure (see `make_query`): covenants `default`, `auto` (semantic cache, routing), `cascade`
(exact cache, tiers), `hedged`, `ensemble`, Contract Net rounds, a few tenants, repeated prompts
(cache hits), and a reservation held and released every 2 s over the HTTP API.
Every `--sample-s` it reads the server's RSS from /proc and, from `/metrics`, how many entries each
bounded structure holds (`hs_retained_entries`) against its cap (`hs_retained_cap`).

Reports RSS at start / at one third / at the end, the growth over the last two thirds of the run
(the acceptance figure: < 10 %), the slope over that span (KiB per minute and bytes per query), and
per structure whether its cap was reached (a structure that never fills its cap has not been
tested). `--small-caps` writes a config with small caps so that a short run passes every cap.

`--census` counts the server's objects by type (``gc.get_objects``; containers and anything the
collector tracks) at one third and at the end, and prints the types that grew, per 1,000 queries:
a structure that keeps something per query shows up as its entry type (how the growth in #10 was
found; tracemalloc slowed the server too much to hold the rate on a shared 2-core machine).

Usage: python bench/soak.py [--rate 30] [--minutes 30] [--sample-s 5] [--small-caps] [--census]
                            [--json out.json]
Linux only (RSS from /proc/<pid>/status).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats

from homeskillet.config import default_pools
from homeskillet.covenant import default_covenant_dir
from homeskillet.wire import Answer, Query, encode

# --small-caps: every cap small enough to be passed in the first minutes at 30 q/s.
SMALL_CAPS: dict[str, Any] = {
    "cache_max_entries": 400,
    "retention": {"results": 500, "strike_results": 100, "strike_cancels": 10, "ledger_settled": 500,
                  "reservations_ended": 20},
}
# The fleet: the default echo pools (not mlx/local: real CPU inference on a small shared machine
# stalls the loop and turns a memory soak into a CPU-contention test), and a second standard pool
# with a latency tail, so the `hedged` covenant has a backup and hedges fire, win, lose, cancel.
HEDGE_POOL = {"name": "echo/standard-us-west", "provider": "echo", "pool_class": "standard", "vram_mb": 24576,
              "tflops": 82, "gpu_model": "L4", "region": "us-west", "usd_per_mtok_in": 0.12,
              "usd_per_mtok_out": 0.24, "start_ms": 15, "ms_per_token": 0.5,
              "options": {"delay_ms": 2.0, "tail_p": 0.15, "tail_ms": 40.0, "seed": 11}}

# Runs `homeskillet up`; each SIGUSR1 writes a census of its objects by type to $SOAK_CENSUS_DIR/<n>.json
# (on the loop's thread, between two bytecodes: about half a second for a 100 MB heap).
CENSUS_SERVER = """
import collections, gc, itertools, json, os, signal, sys
_n = itertools.count()
def _census(*_):
    gc.collect()
    counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    with open(os.path.join(os.environ["SOAK_CENSUS_DIR"], f"{next(_n)}.json"), "w") as f:
        json.dump(counts, f)
signal.signal(signal.SIGUSR1, _census)
from homeskillet.cli import main
sys.exit(main(sys.argv[1:]))
"""

TOPICS = ["the water cycle", "photosynthesis", "TCP congestion control", "the French revolution",
          "black holes", "sourdough baking", "compound interest", "plate tectonics", "the immune system",
          "vector databases", "the Roman aqueducts", "quantum tunnelling", "jazz harmony", "coral reefs"]
ASKS = ["Explain {t} in two sentences", "Give three facts about {t}", "What is the history of {t}",
        "Summarise {t} for a child", "Why does {t} matter"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_query(n: int, rng: random.Random) -> Query:
    """The n-th query of the mix (of 20): 12 default covenant, 2 `auto` (semantic cache), 1 `cascade`
    (exact cache, tiers), 1 `hedged`, 1 `ensemble` (three pools), 1 on the marketplace class, 2 by
    Contract Net. Most prompts are unique (every per-query structure sees a new key); one in ten
    repeats an earlier prompt (a cache hit where caching is on)."""
    tenant = f"soak-{n % 4}"
    unique = rng.random() >= 0.1
    k = n if unique else rng.randrange(max(1, n))
    ask = ASKS[k % len(ASKS)].format(t=TOPICS[k % len(TOPICS)]) + (f" (case {k})" if unique else "")
    r = n % 20
    if r < 12:
        return Query(prompt=ask, tenant=tenant, max_tokens=32)
    if r < 14:
        return Query(prompt=ask + "?", tenant=tenant, covenant="auto", max_tokens=32)
    if r == 14:
        return Query(prompt=ask, tenant=tenant, covenant="cascade", max_tokens=32)
    if r == 15:
        return Query(prompt=ask, tenant=tenant, covenant="hedged", max_tokens=32)
    if r == 16:
        return Query(prompt=ask, tenant=tenant, covenant="ensemble", max_tokens=32)
    if r == 17:
        return Query(prompt=ask, tenant=tenant, covenant="soak-marketplace", max_tokens=32)
    return Query(prompt=ask, tenant=tenant, covenant="soak-cfp", max_tokens=32)


def write_covenants(into: Path) -> None:
    """The shipped covenants and two more from `default` (a Contract Net one, and one on the
    marketplace class), as files rather than per-query overrides: resolving overrides costs the
    server a strict conversion per query, and this soak measures memory, not that."""
    into.mkdir()
    for f in default_covenant_dir().glob("*.toml"):
        (into / f.name).write_text(f.read_text())
    base = (default_covenant_dir() / "default.toml").read_text()
    (into / "soak-cfp.toml").write_text('negotiation = "cfp"\n' + base)
    (into / "soak-marketplace.toml").write_text(base.replace('pool_class = "standard"', 'pool_class = "marketplace"'))


@dataclass
class Sample:
    t: float  # seconds since the load started
    sent: int
    rss_kib: int
    retained: dict[str, float] = field(default_factory=dict)
    cpu_s: float = 0.0


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    reservations: int = 0


_METRIC = re.compile(r'^hs_retained_(entries|cap|evicted)(?:_total)?\{structure="([^"]+)"\} ([0-9.e+-]+)$')


async def scrape(http: httpx.AsyncClient) -> dict[str, float]:
    try:
        text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC.match(line)
        if m:
            out[f"{m[2]}.{m[1]}"] = float(m[3])
    return out


async def one(nc: Any, subject: str, q: Query, tally: Tally) -> None:
    tally.in_flight += 1
    t0 = time.perf_counter()
    try:
        msg = await nc.request(subject, encode(q), timeout=60)
        if msg.headers and msg.headers.get("Nats-Service-Error-Code"):
            code = msg.headers["Nats-Service-Error-Code"]
            tally.errors[code] = tally.errors.get(code, 0) + 1
        else:
            msgspec.json.decode(msg.data, type=Answer)
            tally.answered += 1
            if len(tally.latencies) < 200_000:
                tally.latencies.append(time.perf_counter() - t0)
    except Exception as exc:  # a timeout or a lost connection is a result, not a crash of the soak
        name = type(exc).__name__
        tally.errors[name] = tally.errors.get(name, 0) + 1
    finally:
        tally.in_flight -= 1


async def reserve_and_release(http: httpx.AsyncClient, tally: Tally) -> None:
    """One reservation held and given back over the HTTP API (fills the ended-reservations table)."""
    try:
        made = await http.post("/api/v1/allocations", json={"model": "gemma-2b", "duration_s": 60},
                               headers={"X-Tenant": "soak-res"})
        if made.status_code == 201:
            await http.delete(f"/api/v1/allocations/{made.json()['reservation_id']}", headers={"X-Tenant": "soak-res"})
            tally.reservations += 1
        else:
            tally.errors[f"reserve {made.status_code}"] = tally.errors.get(f"reserve {made.status_code}", 0) + 1
    except httpx.HTTPError as exc:
        tally.errors[type(exc).__name__] = tally.errors.get(type(exc).__name__, 0) + 1


async def drive(nats_url: str, prefix: str, pid: int, metrics_url: str, rate: float, seconds: float,
                sample_s: float, census_dir: Path | None) -> tuple[Tally, list[Sample]]:
    nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
    http = httpx.AsyncClient(base_url=metrics_url, timeout=10)
    tally, samples = Tally(), []
    rng = random.Random(7)
    tasks: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    next_sample, census_at = 0.0, seconds / 3 if census_dir is not None else math.inf
    try:
        while (now := time.monotonic() - start) < seconds:
            due = int(now * rate) + 1  # open loop: the schedule, not the replies, sets the pace
            while tally.sent < due:
                task = asyncio.create_task(one(nc, f"{prefix}.query", make_query(tally.sent, rng), tally))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                tally.sent += 1
                if tally.sent % 60 == 0:  # a reservation every 2 s at 30 q/s
                    task = asyncio.create_task(reserve_and_release(http, tally))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if now >= next_sample:
                samples.append(Sample(now, tally.sent, rss_kib(pid), await scrape(http), cpu_s(pid)))
                print(f"  {now / 60:6.2f} min  sent {tally.sent:7d}  answered {tally.answered:7d}  "
                      f"errors {sum(tally.errors.values()):5d}  in flight {tally.in_flight:4d}  "
                      f"RSS {samples[-1].rss_kib / 1024:7.1f} MiB", flush=True)
                next_sample += sample_s
            if now >= census_at:
                census_at = math.inf
                os.kill(pid, signal.SIGUSR1)
            await asyncio.sleep(min(1.0 / rate, 0.05))
        if tasks:
            await asyncio.wait(tasks, timeout=90)
        samples.append(Sample(time.monotonic() - start, tally.sent, rss_kib(pid), await scrape(http), cpu_s(pid)))
        if census_dir is not None:  # the last census, once the load has drained
            os.kill(pid, signal.SIGUSR1)
            for _ in range(600):
                if len(list(census_dir.glob("*.json"))) >= 2:
                    break
                await asyncio.sleep(0.1)
    finally:
        await http.aclose()
        await nc.close()
    return tally, samples


def at(samples: list[Sample], t: float) -> Sample:
    return min(samples, key=lambda s: abs(s.t - t))


def slope_kib_per_s(samples: list[Sample]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(s.t for s in samples) / n
    mr = sum(s.rss_kib for s in samples) / n
    var = sum((s.t - mt) ** 2 for s in samples)
    return sum((s.t - mt) * (s.rss_kib - mr) for s in samples) / var if var else 0.0


def report(tally: Tally, samples: list[Sample], seconds: float, rate: float) -> dict[str, Any]:
    first, third, last = samples[0], at(samples, seconds / 3), samples[-1]
    tail = [s for s in samples if s.t >= third.t]
    slope = slope_kib_per_s(tail)
    rate_seen = (last.sent - third.sent) / max(1e-9, last.t - third.t)
    caps: dict[str, dict[str, float | bool]] = {}
    for key, value in last.retained.items():
        name, kind = key.rsplit(".", 1)
        caps.setdefault(name, {})[kind] = value
    for name, c in caps.items():
        # Reached: the structure held as many entries as its cap at some sample.
        peak = max((s.retained.get(f"{name}.entries", 0.0) for s in samples), default=0.0)
        c["peak"] = peak
        c["reached"] = "cap" in c and (peak >= c["cap"] or c.get("evicted", 0) > 0)
    lat = sorted(tally.latencies)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "rate_qps": rate, "minutes": seconds / 60, "sent": tally.sent, "answered": tally.answered,
        "reservations": tally.reservations,
        "errors": tally.errors,
        "latency_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "latency_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "rss_mib": {"start": first.rss_kib / 1024, "one_third": third.rss_kib / 1024, "end": last.rss_kib / 1024,
                    "max": max(s.rss_kib for s in samples) / 1024},
        "one_third_at_min": third.t / 60,
        "growth_last_two_thirds_pct": 100.0 * (last.rss_kib - third.rss_kib) / third.rss_kib,
        "slope_last_two_thirds_kib_per_min": slope * 60,
        "slope_bytes_per_query": slope * 1024 / rate_seen if rate_seen else None,
        "server_cpu_ms_per_query": 1000 * (last.cpu_s - first.cpu_s) / max(1, last.sent - first.sent),
        "caps": caps,
        "samples": [(round(s.t, 1), s.sent, s.rss_kib) for s in samples],
    }


def census_growth(census_dir: Path, queries: int, limit: int = 20) -> list[str]:
    """Types whose live count grew between the first and the last census, per 1,000 queries."""
    files = sorted(census_dir.glob("*.json"), key=lambda p: int(p.stem))
    if len(files) < 2 or queries <= 0:
        return ["(fewer than two censuses)"]
    a, b = (json.loads(p.read_text()) for p in (files[0], files[-1]))
    grown = sorted(((b[t] - a.get(t, 0), t) for t in b), reverse=True)[:limit]
    return [f"{d * 1000 / queries:+10.1f} per 1,000 queries  {t} (now {b[t]})" for d, t in grown if d > 0]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=30.0, help="queries per second (default 30)")
    ap.add_argument("--minutes", type=float, default=30.0, help="duration of the load (default 30)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval (default 5)")
    ap.add_argument("--small-caps", action="store_true", help="small caps, so a short run passes every cap")
    ap.add_argument("--config", help="a TOML file whose top-level keys replace the soak's (caps, pools …)")
    ap.add_argument("--census", action="store_true", help="count the server's objects by type at 1/3 and the end")
    ap.add_argument("--json", help="write the report here")
    args = ap.parse_args()
    seconds = args.minutes * 60
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill still stops the server (finally)
    with tempfile.TemporaryDirectory(prefix="hs-soak-") as tmp:
        tmpd = Path(tmp)
        port, http_port = free_port(), free_port()
        cfg = tmpd / "soak.toml"
        write_covenants(tmpd / "covenants")
        conf: dict[str, Any] = {"prefix": "soak", "covenants_dir": str(tmpd / "covenants"),
                                **(SMALL_CAPS if args.small_caps else {}),
                                "pools": [msgspec.to_builtins(p) for p in default_pools() if p.provider == "echo"]
                                + [HEDGE_POOL]}
        if args.config:
            conf.update(tomllib.loads(Path(args.config).read_text()))
        cfg.write_bytes(msgspec.toml.encode(conf))
        env = dict(os.environ)
        census_dir = tmpd / "census"
        census_dir.mkdir()
        # JSON logs, as a deployment runs: the console renderer draws an exception's traceback with
        # rich (locals, syntax colouring) on the I/O loop, seconds each on a busy machine.
        cmd_tail = ["--log-json", "up", "--config", str(cfg), "--port", str(port), "--data-dir", str(tmpd / "js"),
                    "--http", f"127.0.0.1:{http_port}"]
        if args.census:
            env["SOAK_CENSUS_DIR"] = str(census_dir)
            cmd = [sys.executable, "-c", CENSUS_SERVER, *cmd_tail]
        else:
            cmd = [sys.executable, "-m", "homeskillet.cli", *cmd_tail]
        # Its own process group: if it ignores SIGTERM, the kill takes its nats-server too.
        log = (tmpd / "server.log").open("w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True, start_new_session=True)
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
            if "serving" not in line:
                print(f"server did not start: {line!r}\n{(tmpd / 'server.log').read_text()[-3000:]}", file=sys.stderr)
                return 2
            print(f"soak: {args.rate:g} q/s for {args.minutes:g} min on pid {proc.pid} "
                  f"({'small caps' if args.small_caps else 'default caps'})", flush=True)
            tally, samples = await drive(f"nats://127.0.0.1:{port}", "soak", proc.pid,
                                         f"http://127.0.0.1:{http_port}", args.rate, seconds, args.sample_s,
                                         census_dir if args.census else None)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                print("the server ignored SIGTERM for 30 s; killing its process group", file=sys.stderr)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out = report(tally, samples, seconds, args.rate)
        if args.census:
            third = at(samples, seconds / 3)
            out["census_growth"] = census_growth(census_dir, samples[-1].sent - third.sent)
    r = out["rss_mib"]
    print(f"\nsent {out['sent']}, answered {out['answered']}, errors {out['errors']}, "
          f"reservations {out['reservations']}; server CPU {out['server_cpu_ms_per_query']:.1f} ms/query; "
          f"p50 {out['latency_p50_ms'] or 0:.1f} ms, p99 {out['latency_p99_ms'] or 0:.1f} ms")
    print(f"RSS MiB: start {r['start']:.1f}, at {out['one_third_at_min']:.1f} min {r['one_third']:.1f}, "
          f"end {r['end']:.1f}, max {r['max']:.1f}")
    print(f"growth over the last two thirds: {out['growth_last_two_thirds_pct']:+.1f} % "
          f"(slope {out['slope_last_two_thirds_kib_per_min']:+.1f} KiB/min, "
          f"{out['slope_bytes_per_query'] or 0:+.0f} B/query)")
    for name, c in sorted(out["caps"].items()):
        state = "passed" if c["reached"] else "idle (nothing kept)" if not c["peak"] else "below its cap"
        print(f"  {name:42s} cap {c.get('cap', float('nan')):>7.0f}  peak {c['peak']:>7.0f}  "
              f"evicted {c.get('evicted', 0):>8.0f}  {state}")
    for line in out.get("census_growth", []):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
