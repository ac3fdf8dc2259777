"""Time to first token through each ingress, against the engine alone.

The server is `homeskillet up --config FILE --http 127.0.0.1:0` in a child process on an embedded
nats-server with one echo pool that streams like a small model: ``--delay-ms`` before the first
word (prompt processing), then ``--ms-per-token`` per token. The engine alone is the same echo
connector, in this process, with the same options: the time to its first piece is the floor.

Each ingress is driven by its official client, one query at a time (``--n`` each, after a warm-up):

- OpenAI HTTP: the ``openai`` SDK, ``stream=True``: the first content delta;
- MCP: the ``mcp`` SDK over the WebSocket transport, the ``query`` tool with a progress callback:
  the first progress notification;
- NATS: nats-py publishes to ``hs.query`` with ``Hs-Stream: 1`` and reads its inbox: the first
  AnswerChunk.

Also the whole answer (last piece) on each path, and the same OpenAI request unstreamed, whose
first text is its whole answer. Reported: p50/p90 of each, and the ingress's added time to first
token (its p50 less the engine's, the lower of the two engine runs: before and after the paths).

Usage: python bench/ttft.py [--n 40] [--delay-ms 50] [--ms-per-token 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
import openai
from harness import MODEL, machine, pct, serve
from mcp import ClientSession

from homeskillet.config import PoolSpec
from homeskillet.mcp_ws import websocket_client
from homeskillet.providers.base import InferRequest
from homeskillet.providers.echo import EchoConnector
from homeskillet.wire import Answer, AnswerChunk, Query, decode_answer_stream, encode

PROMPT = ("Explain in a few plain words what a covenant promises to a tenant, what a strike is, "
          "and why a pool agent bids for the work")

Timing = tuple[float, float]  # (first text, whole answer), ms from sending


def pool(delay_ms: float, ms_per_token: float) -> PoolSpec:
    return PoolSpec(name="echo/ttft", provider="echo", pool_class="standard", vram_mb=81920, tflops=990,
                    usd_per_mtok_in=0.1, usd_per_mtok_out=0.2, start_ms=delay_ms, ms_per_token=ms_per_token,
                    capacity=64, options={"delay_ms": delay_ms, "ms_per_token": ms_per_token})


async def engine(conn: EchoConnector) -> Timing:
    t0 = time.perf_counter()
    first = None
    async for _ in conn.stream(InferRequest(strike_id="b", model=MODEL, prompt=PROMPT, max_tokens=256)):
        first = first or time.perf_counter()
    assert first is not None
    return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3


async def openai_stream(c: openai.AsyncOpenAI) -> Timing:
    t0 = time.perf_counter()
    first = None
    stream = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                             stream=True)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter()
    assert first is not None
    return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3


async def openai_whole(c: openai.AsyncOpenAI) -> Timing:
    t0 = time.perf_counter()
    done = await c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert done.choices[0].message.content
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms


async def mcp_stream(session: ClientSession) -> Timing:
    t0 = time.perf_counter()
    first: list[float] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        if not first:
            first.append(time.perf_counter())

    res = await session.call_tool("query", {"prompt": PROMPT, "model": MODEL}, progress_callback=progress)
    assert not res.is_error and first, res
    return (first[0] - t0) * 1e3, (time.perf_counter() - t0) * 1e3


async def nats_stream(nc: Any, sub: Any, inbox: str) -> Timing:
    t0 = time.perf_counter()
    await nc.publish("hs.query", encode(Query(prompt=PROMPT, model=MODEL)), reply=inbox, headers={"Hs-Stream": "1"})
    first = None
    while True:
        msg = decode_answer_stream((await sub.next_msg(timeout=30)).data)
        if isinstance(msg, AnswerChunk):
            first = first or time.perf_counter()
            continue
        assert isinstance(msg, Answer) and first is not None, msg
        return (first - t0) * 1e3, (time.perf_counter() - t0) * 1e3


async def runs(n: int, one: Callable[[], Awaitable[Timing]]) -> dict[str, float]:
    for _ in range(3):  # warm-up: connections, first-use imports
        await one()
    got = [await one() for _ in range(n)]
    firsts, wholes = [g[0] for g in got], [g[1] for g in got]
    return {"ttft_p50": pct(firsts, 0.5), "ttft_p90": pct(firsts, 0.9), "whole_p50": pct(wholes, 0.5),
            "whole_p90": pct(wholes, 0.9)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, float]] = {}
    conn = EchoConnector(delay_ms=args.delay_ms, ms_per_token=args.ms_per_token)
    results["engine alone (echo connector's stream, in process)"] = await runs(args.n, lambda: engine(conn))
    served = serve([pool(args.delay_ms, args.ms_per_token)])
    try:
        async with openai.AsyncOpenAI(base_url=served.http_url + "/v1", api_key="unused", max_retries=0) as c:
            results["OpenAI HTTP, stream=true (openai SDK)"] = await runs(args.n, lambda: openai_stream(c))
            results["OpenAI HTTP, not streamed (first text = whole answer)"] = await runs(args.n,
                                                                                           lambda: openai_whole(c))
        ws = served.http_url.replace("http://", "ws://") + "/mcp/ws"
        async with websocket_client(ws) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            results["MCP query tool, progress notifications (mcp SDK, WebSocket)"] = await runs(
                args.n, lambda: mcp_stream(session))
        nc = await nats.connect(served.nats_url)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        results["NATS hs.query, Hs-Stream: 1 (nats-py)"] = await runs(args.n, lambda: nats_stream(nc, sub, inbox))
        await nc.close()
    finally:
        served.stop()
    # Again at the end: the machine is shared, so the floor is measured on both sides of the paths.
    results["engine alone, again after the ingress runs"] = await runs(args.n, lambda: engine(conn))
    floor = min(results["engine alone (echo connector's stream, in process)"]["ttft_p50"],
                results["engine alone, again after the ingress runs"]["ttft_p50"])
    for r in results.values():
        r["added_ttft_p50"] = r["ttft_p50"] - floor
    return {"machine": machine(), "n": args.n, "delay_ms": args.delay_ms, "ms_per_token": args.ms_per_token,
            "results": results}


def report(out: dict[str, Any]) -> None:
    print(f"{out['machine']}; n={out['n']} per path; echo engine: {out['delay_ms']:g} ms before the first word, "
          f"{out['ms_per_token']:g} ms per token")
    print(f"{'path':66} {'TTFT p50':>9} {'p90':>7} {'added':>7} {'whole p50':>10} {'p90':>7}")
    for name, r in out["results"].items():
        print(f"{name:66} {r['ttft_p50']:9.1f} {r['ttft_p90']:7.1f} {r['added_ttft_p50']:7.1f} "
              f"{r['whole_p50']:10.1f} {r['whole_p90']:7.1f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--ms-per-token", type=float, default=10.0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    out = asyncio.run(main(args))
    report(out)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
