"""Analysis cost per MB of prompt, for each hostile prompt shape of issue #10: CPU time of
``features``, of the whole plan (assess → decompose → fragments: hashes, sketches, token counts)
under the ``default`` and ``auto`` covenants, and of the semantic cache's probe (hashing
embedding + key terms) that a long fragment gets off the I/O loop. Sizes 64 KiB, 256 KiB and
1 MiB show it linear (ms/MB flat across sizes). For contrast, the patterns the analysis used
before (``OLD_*``) at 16 and 32 KiB: doubling the text quadrupled their time.

Usage: python bench/analysis.py [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import time
from collections.abc import Callable

from homeskillet.analyze import features
from homeskillet.cache import ResultCache
from homeskillet.covenant import CovenantBook
from homeskillet.strategies.serving import plan
from homeskillet.wire import CachePolicy, Query

KIB = 1024
SHAPES: dict[str, Callable[[int], str]] = {
    "one line of words": lambda n: ("word " * n)[:n],
    "one long word": lambda n: "a" * n,
    "many lines": lambda n: ("a line of text here\n" * n)[:n],
    "many '?'": lambda n: ("why? " * n)[:n],
    "'?' then none": lambda n: "why? why? " + "a" * (n - 10),
    "code-like": lambda n: ("x = foo(a, b);\n" * n)[:n],
    "open calls": lambda n: ("f(" * n)[:n],
    "prose": lambda n: ("The quick brown fox jumps over the lazy dog. Compare it to 3 + 4 = 7 and explain why. "
                        * n)[:n],
    "non-latin": lambda n: ("漢字かな交じり文 " * n)[: n // 3],  # about n bytes of UTF-8
}
OLD_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import|#include|fn |func |let |const |var |return\b)|"
                           r"[;{}]\s*$|=>|\w+\([^)]*\)\s*[:{]")
OLD_QUESTION = re.compile(r"[^?]*\?")


def cpu_ms(fn: Callable[..., object], *args: object) -> float:
    t0 = time.process_time()
    fn(*args)
    return (time.process_time() - t0) * 1000


def old_patterns(text: str) -> None:
    """What the old analysis ran that was quadratic: the code-line test per line, the question split."""
    sum(1 for ln in text.splitlines() if ln.strip() and OLD_CODE_LINE.search(ln))
    OLD_QUESTION.findall(text)
    OLD_QUESTION.sub("", text)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="64 and 256 KiB only")
    args = ap.parse_args()
    sizes = [64 * KIB, 256 * KIB] + ([] if args.quick else [1024 * KIB])
    book = CovenantBook.load(None)
    cache = ResultCache()
    semantic = CachePolicy(mode="semantic")
    print(f"# bench/analysis.py — {datetime.date.today()} — {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; CPU ms per MB of prompt (process time)\n")
    print("| shape | size | features | plan (default) | plan (auto: +long-context chunks) | cache probe |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, make in SHAPES.items():
        for size in sizes:
            text = make(size)
            mb = len(text.encode()) / (1 << 20)
            row = [cpu_ms(features, text),
                   cpu_ms(plan, Query(prompt=text, tenant="t"), book, []),
                   cpu_ms(plan, auto(text), book, []),
                   cpu_ms(cache.probe, _frag(text), semantic)]
            print(f"| {name} | {size // KIB} KiB | " + " | ".join(f"{v / mb:,.0f}" for v in row) + " |")
    print("\nThe old patterns (code line, question split), CPU ms for the text, not per MB:\n")
    print("| shape | 16 KiB | 32 KiB | ratio (2x the text) |")
    print("|---|---:|---:|---:|")
    for name in ("one long word", "'?' then none", "open calls", "one line of words"):
        a, b = (cpu_ms(old_patterns, SHAPES[name](n)) for n in (16 * KIB, 32 * KIB))
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a if a else float('nan'):.1f}x |")


def auto(text: str) -> Query:
    """The ``auto`` covenant with an 8,192-token window: a long prompt is cut into chunks."""
    return Query(prompt=text, tenant="t", covenant="auto",
                 overrides={"strategy": {"map_reduce": {"chunk_tokens": 8192}}})


def _frag(text: str):  # type: ignore[no-untyped-def]
    from homeskillet.analyze import fragment_hash
    from homeskillet.wire import Fragment

    return Fragment(fragment_id="f", query_id="q", index=0, prompt=text, model="m", hash=fragment_hash(text, "m"),
                    fingerprint=0, prompt_tokens=1, max_tokens=1)


if __name__ == "__main__":
    main()
