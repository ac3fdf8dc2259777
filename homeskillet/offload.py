"""A query's CPU-bound work, off the I/O loop when its text is long.

Analysis (features, decomposition, hashes, fingerprints) and the semantic cache's probe are linear
in the prompt, yet a prompt near the 1 MiB limit still costs some hundreds of milliseconds of CPU.
On the I/O loop that time would stall every tenant, the NATS connection, strike heartbeats and
``/healthz``. So work on a text of ``OFFLOAD_FROM_CHARS`` or more runs on a small bounded thread
pool (the loop keeps the GIL for most of each switch interval, so it stays responsive); shorter
texts (most prompts) run inline, where a thread hop would cost more than the work itself.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

from .wire import Query

__all__ = ["OFFLOAD_FROM_CHARS", "WORKERS", "off_loop", "query_chars"]

# About where planning a prompt costs a millisecond of CPU (bench/analysis.py: 0.1-0.7 µs a character).
OFFLOAD_FROM_CHARS = 4096
WORKERS = 2  # at most this many long prompts are analysed at once; the rest wait their turn

P = ParamSpec("P")
T = TypeVar("T")


class _CpuPool:
    """``WORKERS`` daemon threads taking jobs from one queue. Not a ThreadPoolExecutor: its threads
    are joined at interpreter exit, so a stopping process would first finish every long prompt
    still running; a daemon thread ends with the process. A job whose caller has gone (its future
    cancelled while queued) is skipped."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        with self._lock:
            while len(self._threads) < self.workers:
                t = threading.Thread(target=self._run, name=f"hs-cpu-{len(self._threads)}", daemon=True)
                t.start()
                self._threads.append(t)
        done: Future[T] = Future()
        self._jobs.put((fn, done))
        return done

    def _run(self) -> None:
        while True:
            fn, done = self._jobs.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(fn())
            except BaseException as exc:  # the caller's to raise
                done.set_exception(exc)


_pool = _CpuPool(WORKERS)


def query_chars(query: Query) -> int:
    """The size of a query's text, in characters (what analysis is linear in)."""
    if query.prompt is not None:
        return len(query.prompt)
    return sum(len(m.content) for m in query.messages or [])


async def off_loop(chars: int, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``: inline for a text shorter than ``OFFLOAD_FROM_CHARS``, else on the
    CPU pool. ``fn`` must be safe to run off the loop: pure, or reading only what the loop does
    not change meanwhile."""
    if chars < OFFLOAD_FROM_CHARS:
        return fn(*args, **kwargs)
    return await asyncio.wrap_future(_pool.submit(functools.partial(fn, *args, **kwargs)))
