"""What the OpenAI-compatible endpoint adds over a direct NATS `hs.query`, same server, same run.

The server is `homeskillet up --http 127.0.0.1:0` in a child process (embedded nats-server, one
instant echo pool). From here, at 1 in flight, the same query (one user message, model
gemma-2b, so both resolve the same covenant) goes by three paths, interleaved in blocks of
ten requests so that machine noise falls on all of them alike:

* nats: nats-py request on `hs.query`, the reply decoded as an `Answer`;
* httpx: `POST /v1/chat/completions` with one keep-alive `httpx.AsyncClient`, the body decoded
  as our `ChatCompletion` Struct (the endpoint's own cost, with the least client on top);
* openai: the same request through the official `openai` SDK (`AsyncOpenAI`, which also keeps
  its connection alive; adds the SDK's own request building and pydantic parsing).

Reported: p50/p99 per path, the CPU time per request on each path of the `homeskillet up` process
(all its threads, from /proc) and of this client process (figures the machine's noise barely
moves; the nats-server's share is in neither), and the p50 difference and ratio of each HTTP
path to NATS. The target (≤ 3 ms p50 added) is read on the httpx path. Usage:
python bench/http_overhead.py [--n 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from harness import MODEL, cpu_time_ns, machine, pct, serve
from openai import AsyncOpenAI

from homeskillet.ingress.openai_wire import ChatCompletion
from homeskillet.wire import Answer, Message, Query, encode

PROMPT = "What does a strike cost?"
TARGET_MS = 3.0


async def paths(nats_url: str, http_url: str, stack: list[Any]) -> dict[str, Callable[[], Awaitable[None]]]:
    nc = await nats.connect(nats_url)
    stack.append(nc.close)
    http = httpx.AsyncClient(base_url=http_url, timeout=10)
    stack.append(http.aclose)
    sdk = AsyncOpenAI(base_url=http_url + "/v1", api_key="unused: auth is off", max_retries=0, timeout=10)
    stack.append(sdk.close)
    # The same Query the endpoint builds from the OpenAI body (openai_api.to_query).
    query = encode(Query(messages=[Message(role="user", content=PROMPT)], model=MODEL, temperature=1.0,
                         tenant="bench"))
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "tenant": "bench"}

    async def by_nats() -> None:
        msg = await nc.request("hs.query", query, timeout=10)
        if (msg.headers or {}).get("Nats-Service-Error"):
            raise RuntimeError(f"hs.query failed: {msg.headers['Nats-Service-Error']}")
        msgspec.json.decode(msg.data, type=Answer)

    async def by_httpx() -> None:
        r = await http.post("/v1/chat/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"POST /v1/chat/completions: {r.status_code} {r.text[:300]}")
        msgspec.json.decode(r.content, type=ChatCompletion)

    async def by_openai() -> None:
        await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                          extra_body={"tenant": "bench"})

    return {"nats": by_nats, "httpx": by_httpx, "openai": by_openai}


async def interleaved(calls: dict[str, Callable[[], Awaitable[None]]], n: int, warmup: int, pid: int,
                      block: int = 10) -> tuple[dict[str, list[float]], dict[str, tuple[float, float]]]:
    """Latency in µs of each path at 1 in flight, the paths taking turns in blocks of ``block``
    requests (order rotated), and the server's and this process's CPU µs per request on each path."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            await calls[name]()
    lat: dict[str, list[float]] = {name: [] for name in names}
    cpu_ns = dict.fromkeys(names, 0)
    client_ns = dict.fromkeys(names, 0)
    for b in range((n + block - 1) // block):
        for name in names[b % len(names):] + names[:b % len(names)]:
            before, mine = cpu_time_ns(pid), time.process_time_ns()
            for _ in range(min(block, n - b * block)):
                t = time.perf_counter()
                await calls[name]()
                lat[name].append((time.perf_counter() - t) * 1e6)
            cpu_ns[name] += cpu_time_ns(pid) - before
            client_ns[name] += time.process_time_ns() - mine
    return lat, {name: (cpu_ns[name] / 1e3 / n, client_ns[name] / 1e3 / n) for name in names}


async def run(n: int, warmup: int) -> dict[str, Any]:
    served = serve()
    closers: list[Any] = []
    try:
        calls = await paths(served.nats_url, served.http_url, closers)
        lat, cpu = await interleaved(calls, n, warmup, served.proc.pid)
        events = served.log_events()
    finally:
        for close in reversed(closers):
            await close()
        served.stop()
    stats = {name: {"p50_us": statistics.median(xs), "p99_us": pct(xs, 0.99), "server_cpu_us": cpu[name][0],
                    "client_cpu_us": cpu[name][1]} for name, xs in lat.items()}
    base = stats["nats"]["p50_us"]
    added = {name: {"p50_added_ms": (s["p50_us"] - base) / 1e3, "p50_ratio": s["p50_us"] / base}
             for name, s in stats.items() if name != "nats"}
    return {"n": n, "warmup": warmup, "paths": stats, "vs_nats": added, "server_log_events": events}


def report(r: dict[str, Any]) -> None:
    print(f"{r['n']} requests per path at 1 in flight, interleaved, after {r['warmup']} warm-up each")
    print(f"{'path':<44}{'p50 µs':>9}{'p99 µs':>9}{'server CPU µs':>15}{'client CPU µs':>15}{'p50 added':>12}"
          f"{'ratio':>8}")
    labels = {"nats": "nats-py request on hs.query",
              "httpx": "POST /v1/chat/completions (httpx keep-alive)",
              "openai": "same, official openai SDK"}
    for name, s in r["paths"].items():
        extra = r["vs_nats"].get(name)
        tail = f"{extra['p50_added_ms']:>9.2f} ms{extra['p50_ratio']:>7.2f}×" if extra else ""
        print(f"{labels[name]:<44}{s['p50_us']:>9.0f}{s['p99_us']:>9.0f}{s['server_cpu_us']:>15.0f}"
              f"{s['client_cpu_us']:>15.0f}{tail}")
    added = r["vs_nats"]["httpx"]["p50_added_ms"]
    print(f"target (OpenAI endpoint adds ≤ {TARGET_MS:g} ms p50 over hs.query, httpx path): "
          f"{'met' if added <= TARGET_MS else 'NOT met'} (+{added:.2f} ms)")
    if r["server_log_events"]:
        print(f"server warnings/errors logged: {r['server_log_events']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="requests per path")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up requests per path")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.n < 1 or args.warmup < 0:
        ap.error("--n must be at least 1 and --warmup not negative")
    print(f"machine: {machine()}")
    result = asyncio.run(run(args.n, args.warmup))
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), **result}, indent=1))


if __name__ == "__main__":
    main()
