"""Many concurrent MCP WebSocket sessions on one `homeskillet up` process, and what they cost it.

The server is `homeskillet up --http 127.0.0.1:0` in a child process (embedded nats-server, one
instant echo pool). One client process (or ``--procs N``, to spread the clients' CPU; one holds
1,000 sessions well on two cores) opens the sessions with the official ``mcp`` SDK's
``ClientSession`` over ``homeskillet.mcp_ws.websocket_client``, ``--handshakes`` at a time; every
session initialises and calls the ``query`` tool (the SDK client also lists the tools, to check
the result against the tool's output schema). Once every session in every client is open they
are all held, and each calls ``query`` once more, all at once; then all close.

Reported: sessions held, queries answered, errors, the server's resident memory (VmRSS sampled
every 50 ms, and the kernel's high-water mark VmHWM) and the clients' own, the server's open
file descriptors while all sessions are held (an independent count of the connections it holds)
and its descriptor limit, and its CPU time per session. Linux only (/proc). The target (≥ 1,000
sessions under 1 GB RSS) is about the serving process; the clients are reported beside it.

Usage: python bench/mcp_sessions.py [--sessions 1000] [--procs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import MODEL, cpu_time_ns, machine, memory_kib, nofile_limit, open_files, pct, raise_nofile, serve
from mcp import ClientSession

from homeskillet.mcp_ws import websocket_client

PHASE_TIMEOUT_S = 600.0


# --- client process --------------------------------------------------------------------------------


async def _session(url: str, i: int, opened: asyncio.Queue[bool], asked: asyncio.Queue[bool], go: asyncio.Event,
                   close: asyncio.Event, result: dict[str, Any], handshake: asyncio.Semaphore) -> None:
    async def ask(round_: int) -> None:
        t = time.perf_counter()
        res = await session.call_tool("query", {"prompt": f"What does strike {i}.{round_} cost?", "model": MODEL})
        if res.is_error:
            raise RuntimeError(f"query tool error: {res.content[0]}")
        result["latency_ms"][round_ - 1].append((time.perf_counter() - t) * 1e3)
        result["answered"] += 1
        for frag in (res.structured_content or {}).get("fragments", []):
            # Which fallback step served it, and whether a pool failed it first (retried).
            key = f"{frag['step']}{' after a failure' if frag.get('tried') else ''}"
            result["served_by"][key] = result["served_by"].get(key, 0) + 1

    phase = opened  # the queue that hears of this session's end if it fails now
    t0 = time.perf_counter()
    try:
        async with contextlib.AsyncExitStack() as stack:
            async with handshake:  # the opening burst only; held sessions do not count against it
                read, write = await stack.enter_async_context(websocket_client(url, headers={"X-Tenant": "bench"}))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
            await ask(1)
            result["open_ms"].append((time.perf_counter() - t0) * 1e3)
            opened.put_nowait(True)
            phase = asked
            await go.wait()
            await ask(2)
            result["held"] += 1
            asked.put_nowait(True)
            phase = None
            await close.wait()
    except Exception as exc:  # counted and shown, not fatal: the figure is how many sessions held
        result["errors"] += 1
        result["error_samples"].setdefault(type(exc).__name__, repr(exc)[:300])
        if phase is not None:
            phase.put_nowait(False)


async def client(url: str, count: int, handshakes: int) -> None:
    """One client process: open ``count`` sessions, then follow the parent's lines on stdin."""
    limit = raise_nofile()
    result: dict[str, Any] = {"held": 0, "answered": 0, "errors": 0, "error_samples": {}, "open_ms": [],
                              "latency_ms": ([], []), "served_by": {}}
    opened: asyncio.Queue[bool] = asyncio.Queue()
    asked: asyncio.Queue[bool] = asyncio.Queue()
    go, close = asyncio.Event(), asyncio.Event()
    handshake = asyncio.Semaphore(handshakes)
    tasks = [asyncio.create_task(_session(url, i, opened, asked, go, close, result, handshake)) for i in range(count)]
    n_open = sum([await opened.get() for _ in range(count)])
    _say({"phase": "open", "open": n_open, "errors": result["errors"], "nofile": list(limit),
          "open_p50_ms": statistics.median(result["open_ms"]) if n_open else None})
    await asyncio.to_thread(sys.stdin.readline)  # "go": every client's sessions are open
    go.set()
    t = time.perf_counter()
    for _ in range(n_open):
        await asked.get()
    lat = result["latency_ms"][1]
    _say({"phase": "queried", "held": result["held"], "answered": result["answered"], "errors": result["errors"],
          "error_samples": result["error_samples"], "served_by": result["served_by"],
          "round2_p50_ms": statistics.median(lat) if lat else None,
          "round2_p99_ms": pct(lat, 0.99), "round2_s": time.perf_counter() - t, "mem_kib": memory_kib(os.getpid())})
    await asyncio.to_thread(sys.stdin.readline)  # "close"
    close.set()
    await asyncio.gather(*tasks)


def _say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


# --- the parent: server, clients, measurements -----------------------------------------------------


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), PHASE_TIMEOUT_S)
    if not raw:
        raise RuntimeError(f"client process {proc.pid} exited (status {await proc.wait()}); see its stderr")
    return json.loads(raw)  # type: ignore[no-any-return]


async def _tell(procs: list[asyncio.subprocess.Process], word: str) -> None:
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"{word}\n".encode())
        await p.stdin.drain()


async def _sample(pid: int, peak: dict[str, int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            peak["rss"] = max(peak["rss"], memory_kib(pid)["VmRSS"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def run(sessions: int, procs: int, handshakes: int) -> dict[str, Any]:
    served = serve()
    pid = served.proc.pid
    ws_url = served.http_url.replace("http://", "ws://") + "/mcp/ws"
    clients: list[asyncio.subprocess.Process] = []
    try:
        idle = memory_kib(pid)
        peak = {"rss": idle["VmRSS"]}
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(pid, peak, stop))
        cpu0 = cpu_time_ns(pid)
        shares = [sessions // procs + (1 if k < sessions % procs else 0) for k in range(procs)]
        t0 = time.perf_counter()
        for share in shares:
            clients.append(await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--client", ws_url, "--sessions", str(share), "--handshakes",
                str(handshakes), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE))
        opened = [await _line(p) for p in clients]
        open_s = time.perf_counter() - t0
        held_rss, held_fds = memory_kib(pid)["VmRSS"], open_files(pid)
        cpu_open = cpu_time_ns(pid) - cpu0
        await _tell(clients, "go")
        cpu1 = cpu_time_ns(pid)
        queried = [await _line(p) for p in clients]
        cpu_round2 = cpu_time_ns(pid) - cpu1
        after_rss = memory_kib(pid)
        await _tell(clients, "close")
        for p in clients:
            await asyncio.wait_for(p.wait(), PHASE_TIMEOUT_S)
        stop.set()
        await sampler
        closed_rss = memory_kib(pid)["VmRSS"]
        server_limit = nofile_limit(pid)
        events = served.log_events()
    finally:
        for p in clients:
            if p.returncode is None:
                p.kill()
                await p.wait()
        served.stop()

    errors: dict[str, str] = {}
    served_by: Counter[str] = Counter()
    for q in queried:
        errors.update(q["error_samples"])
        served_by.update(q["served_by"])
    return {
        "sessions": sessions, "client_procs": procs,
        "opened": sum(o["open"] for o in opened), "held": sum(q["held"] for q in queried),
        "answered": sum(q["answered"] for q in queried), "errors": sum(q["errors"] for q in queried),
        "error_samples": errors, "served_by": dict(served_by), "server_log_events": events, "open_all_s": open_s,
        "open_p50_ms": statistics.median(o["open_p50_ms"] for o in opened if o["open_p50_ms"] is not None),
        "round2_p50_ms": statistics.median(q["round2_p50_ms"] for q in queried if q["round2_p50_ms"] is not None),
        "round2_s": max(q["round2_s"] for q in queried),
        "server": {"idle_rss_mib": idle["VmRSS"] / 1024, "held_rss_mib": held_rss / 1024,
                   "peak_rss_mib": peak["rss"] / 1024, "hwm_mib": after_rss["VmHWM"] / 1024,
                   "after_close_rss_mib": closed_rss / 1024, "open_fds_held": held_fds, "nofile": server_limit,
                   "kib_per_session": (held_rss - idle["VmRSS"]) / max(1, sessions),
                   "cpu_ms_per_open": cpu_open / 1e6 / max(1, sessions),
                   "cpu_ms_per_query_held": cpu_round2 / 1e6 / max(1, sessions)},
        "clients": {"rss_mib": [q["mem_kib"]["VmRSS"] / 1024 for q in queried],
                    "hwm_mib": [q["mem_kib"]["VmHWM"] / 1024 for q in queried],
                    "nofile": opened[0]["nofile"]},
    }


def report(r: dict[str, Any]) -> None:
    s, c = r["server"], r["clients"]
    print(f"sessions asked {r['sessions']} over {r['client_procs']} client process(es): opened {r['opened']}, "
          f"held to the end {r['held']}, queries answered {r['answered']} (of {2 * r['sessions']}), "
          f"errors {r['errors']}")
    for name, sample in r["error_samples"].items():
        print(f"  e.g. {name}: {sample}")
    print(f"fragments served by (fallback step): {r['served_by']}")
    if r["server_log_events"]:
        print(f"server warnings/errors logged: {r['server_log_events']}")
    print(f"open + initialize + first query: all in {r['open_all_s']:.1f} s (p50 per session "
          f"{r['open_p50_ms']:.0f} ms); second query on every held session at once: "
          f"{r['round2_s']:.1f} s (per-client p50 {r['round2_p50_ms']:.0f} ms)")
    print(f"server RSS MiB: idle {s['idle_rss_mib']:.0f}, all held {s['held_rss_mib']:.0f}, peak sampled "
          f"{s['peak_rss_mib']:.0f}, high-water {s['hwm_mib']:.0f}, after close {s['after_close_rss_mib']:.0f}; "
          f"{s['kib_per_session']:.0f} KiB per held session; open fds while held {s['open_fds_held']} "
          f"(limit {s['nofile']})")
    print(f"server CPU per session: {s['cpu_ms_per_open']:.1f} ms to open (upgrade, initialize, tools/list, "
          f"first query), {s['cpu_ms_per_query_held']:.1f} ms per query on a held session")
    print(f"client RSS MiB (each process, at its end): {', '.join(f'{x:.0f}' for x in c['rss_mib'])}; "
          f"high-water {', '.join(f'{x:.0f}' for x in c['hwm_mib'])} (fd limit {c['nofile'][0]}/{c['nofile'][1]})")
    total = s["hwm_mib"] + sum(c["hwm_mib"])
    ok = r["held"] >= 1000 and s["hwm_mib"] < 1024
    verdict = "not tested (ask for --sessions 1000 or more)" if r["sessions"] < 1000 else "met" if ok else "NOT met"
    print(f"target (≥ 1,000 sessions held, serving process under 1 GB RSS): {verdict}; "
          f"server + clients high-water together {total:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=1, help="client processes to spread the sessions over")
    ap.add_argument("--handshakes", type=int, default=64, help="sessions opening at once, per client process")
    ap.add_argument("--json")
    ap.add_argument("--client", metavar="WS_URL", help=argparse.SUPPRESS)  # internal: run as one client process
    args = ap.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.sessions, args.handshakes))
        return
    if args.sessions < 1 or args.procs < 1:
        ap.error("--sessions and --procs must be at least 1")
    print(f"machine: {machine()}")
    result = asyncio.run(run(args.sessions, min(args.procs, args.sessions), args.handshakes))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
