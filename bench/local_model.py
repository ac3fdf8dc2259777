"""The local model alone: load time, prompt and generation tokens/s, peak RSS, with and without
OpenBLAS (each configuration in a fresh process, since the BLAS is chosen before mlx is imported).

    python bench/local_model.py            # both configurations, a Markdown table on stdout
    python bench/local_model.py --child    # one measurement as JSON (used by the above)

``time_to_first_token`` is the model-alone baseline that time-to-first-token through each ingress
(OpenAI SSE, Ollama, MCP, NATS) is compared against; the streaming benchmarks extend from it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time

PROMPT = [("user", "Explain in a few sentences why the sky is blue.")]
GEN_TOKENS = 48
ROUNDS = 3


def time_to_first_token(model: object, messages: list[tuple[str, str]] = PROMPT) -> float:
    """Seconds from submitting a run to its first decoded piece, on the model alone."""
    from homeskillet.localmodel import GenRequest, LocalModel

    assert isinstance(model, LocalModel)
    t0 = time.perf_counter()
    run = model.run(GenRequest(messages=messages, max_tokens=4))
    first = None
    for _ in run:
        first = first if first is not None else time.perf_counter() - t0
    return first if first is not None else float("nan")


def child() -> dict[str, object]:
    from homeskillet.localmodel import GenRequest, get_local_model
    from homeskillet.localmodel.blas import blas

    t0 = time.perf_counter()
    model = get_local_model()
    model.wait_loaded()
    load_s = time.perf_counter() - t0
    prompt_tps, gen_tps = [], []
    for _ in range(ROUNDS):
        g = model.generate(GenRequest(messages=PROMPT, max_tokens=GEN_TOKENS))
        prompt_tps.append(g.prompt_tokens / (g.prompt_eval_ms / 1000))
        gen_tps.append((g.completion_tokens - 1) / (g.eval_ms / 1000))
    ttft = sorted(time_to_first_token(model) for _ in range(ROUNDS))[ROUNDS // 2]
    choice = blas()
    return {"blas": choice.name if choice else "?", "load_s": load_s, "model_load_ms": model.load_ms,
            "prompt_tokens": g.prompt_tokens, "prompt_tps": sorted(prompt_tps)[ROUNDS // 2],
            "gen_tps": sorted(gen_tps)[ROUNDS // 2], "ttft_ms": ttft * 1000,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if "--child" in sys.argv:
        from homeskillet.localmodel.engine import exit_now_if_models_ran

        print(json.dumps(child()), flush=True)
        exit_now_if_models_ran(0)
        return
    rows = []
    for label, env in (("OpenBLAS (Debian libopenblas0-pthread)", {}), ("reference BLAS (stock mlx[cpu])",
                                                                       {"HOMESKILLET_BLAS": "none"})):
        out = subprocess.run([sys.executable, __file__, "--child"], env={**os.environ, **env}, capture_output=True,
                             text=True, check=True).stdout
        rows.append((label, json.loads(out.strip().splitlines()[-1])))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}; {time.strftime('%Y-%m-%d')}")
    print("| BLAS | load (process, s) | prompt tok/s | generation tok/s | first token (ms) | peak RSS (MB) |")
    print("|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['load_s']:.1f} | {r['prompt_tps']:.0f} | {r['gen_tps']:.1f} | {r['ttft_ms']:.0f} | "
              f"{r['rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
