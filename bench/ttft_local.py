"""Time to first token of the real local model through the OpenAI endpoint, against the model alone.

The server is `homeskillet up --http` in a child process (its default pool: `mlx/local` on
SmolLM2-135M-Instruct); the client is the official `openai` SDK, one query at a time, streamed and
not. The model alone is the same question on `homeskillet.localmodel` in this process, after the
server has stopped (so the two never share the cores).

Usage: python bench/ttft_local.py [--n 8] [--max-tokens 12]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import openai

QUESTION = "What is the capital of France?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def through_openai(n: int, max_tokens: int) -> tuple[list[float], list[float], list[float]]:
    nats_port, http_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "homeskillet.cli", "--log-level", "WARNING", "up", "--port", str(nats_port),
           "--http", f"127.0.0.1:{http_port}", "--data-dir", tempfile.mkdtemp(prefix="hs-ttft-")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()  # "homeskillet serving on …": ready, model loaded
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]

    def streamed() -> tuple[float, float]:
        t0, first = time.perf_counter(), None
        for chunk in client.chat.completions.create(model="smollm2-135m", messages=messages,  # type: ignore[call-overload]
                                                    max_tokens=max_tokens, stream=True):
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
        return first or float("nan"), time.perf_counter() - t0

    def whole() -> float:
        t0 = time.perf_counter()
        client.chat.completions.create(model="smollm2-135m", messages=messages,  # type: ignore[call-overload]
                                       max_tokens=max_tokens)
        return time.perf_counter() - t0

    try:
        streamed(), whole()  # warm-up
        runs = [streamed() for _ in range(n)]
        flat = [whole() for _ in range(n)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return [r[0] for r in runs], [r[1] for r in runs], flat


def model_alone(n: int, max_tokens: int) -> tuple[list[float], list[float]]:
    from homeskillet.localmodel import GenRequest, get_local_model, prepare_blas

    prepare_blas()
    model = get_local_model()
    model.wait_loaded()
    firsts, wholes = [], []
    for _ in range(n + 1):
        t0, first = time.perf_counter(), None
        for _piece in model.run(GenRequest(messages=[("user", QUESTION)], max_tokens=max_tokens)):
            first = first if first is not None else time.perf_counter() - t0
        firsts.append(first or float("nan"))
        wholes.append(time.perf_counter() - t0)
    return firsts[1:], wholes[1:]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=12)
    a = ap.parse_args()
    first, whole_streamed, whole = through_openai(a.n, a.max_tokens)
    alone_first, alone_whole = model_alone(a.n, a.max_tokens)

    def p50(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:,.0f}"

    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; "
          f"{time.strftime('%Y-%m-%d')}; n={a.n}, max_tokens={a.max_tokens}, {QUESTION!r}\n")
    print("| path | first token p50 (ms) | whole answer p50 (ms) |")
    print("|---|---|---|")
    print(f"| model alone (`localmodel`, this process) | {p50(alone_first)} | {p50(alone_whole)} |")
    print(f"| OpenAI `/v1/chat/completions`, stream=True | {p50(first)} | {p50(whole_streamed)} |")
    print(f"| OpenAI `/v1/chat/completions`, unstreamed | {p50(whole)} (its whole answer) | {p50(whole)} |")
    added = (statistics.median(first) - statistics.median(alone_first)) * 1000
    print(f"\nadded by the OpenAI path to the first token: {added:+,.0f} ms")
    return 0


if __name__ == "__main__":
    from homeskillet.localmodel.engine import exit_now_if_models_ran

    status = main()
    exit_now_if_models_ran(status)
    raise SystemExit(status)
