"""A local mlx-lm model served from one generation thread.

mlx generation is not thread-safe, so everything that touches mlx for a model (loading, adapters,
prefill, every decoding step) runs on that model's one thread, never on the I/O loop. Runs in
flight take turns one token at a time (round robin), so a long answer does not hold a short one's
first token back. Callers get a ``Run``: iterate its text pieces as they are decoded, from a thread
(``for``) or from the loop (``async for``), then read ``run.result``; leaving early cancels it.

Loading starts with the first ``LocalModel.start()`` (a connector calls it when built, so the model
loads while the rest of the process starts) and reports its time once, to the first run after it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import ExtraMissing
from .adapters import AdapterRegistry
from .store import DEFAULT_MODEL, resolve_model_dir

__all__ = ["GenRequest", "Generation", "LocalModel", "Run", "exit_now_if_models_ran", "get_local_model", "preload"]


class GenRequest(msgspec.Struct, kw_only=True):
    """What to generate: ``messages`` (rendered with the model's chat template) or a raw ``prompt``."""

    messages: list[tuple[str, str]] | None = None
    prompt: str = ""
    max_tokens: int = 256
    temperature: float = 0.0
    adapter: str = ""  # a LoRA adapter from the model's registry; "" = the base model


class Generation(msgspec.Struct, kw_only=True):
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]
    load_ms: float  # the model's load time, reported by the first run after the load only
    prompt_eval_ms: float  # prefill: from the run's start on the thread to its first token
    eval_ms: float  # first token to last
    logprob_mean: float | None = None  # mean log-probability of the completion's tokens


_Emit = Callable[[str, Any], None]  # ("piece", str) | ("done", Generation) | ("error", Exception)


class Run:
    """One generation in flight. Iterate it (``for`` in a thread, ``async for`` on a loop)."""

    def __init__(self, asynchronous: bool) -> None:
        self.result: Generation | None = None
        self.cancelled = threading.Event()
        self._loop = asyncio.get_running_loop() if asynchronous else None
        self._aq: asyncio.Queue[tuple[str, Any]] = asyncio.Queue() if asynchronous else None  # type: ignore[assignment]
        self._q: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._over = False

    def emit(self, kind: str, payload: Any) -> None:  # called on the generation thread
        if self._loop is None:
            self._q.put((kind, payload))
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self._aq.put_nowait, (kind, payload))

    def cancel(self) -> None:
        self.cancelled.set()

    def _take(self, kind: str, payload: Any) -> str | None:
        if kind == "piece":
            return str(payload)
        self._over = True
        if kind == "done":
            self.result = payload
            return None
        raise payload

    def __iter__(self) -> Iterator[str]:
        try:
            while not self._over:
                piece = self._take(*self._q.get())
                if piece is not None:
                    yield piece
        finally:
            self.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while not self._over:
                piece = self._take(*await self._aq.get())
                if piece is not None:
                    yield piece
        finally:
            self.cancel()

    def text(self) -> Generation:
        """Drain the run (from a thread) and return its result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    async def atext(self) -> Generation:
        async for _ in self:
            pass
        assert self.result is not None
        return self.result


def preload() -> None:
    """Load a fast BLAS, then import mlx-lm, in the calling thread.

    Call it on the main thread: importing mlx-lm on another thread leaves thread-bound mlx state
    behind that sometimes aborts the process at exit ("terminate called without an active
    exception", status 134) — seen here about one run in three."""
    from .blas import prepare_blas

    prepare_blas()
    import mlx_lm.generate
    import mlx_lm.sample_utils
    import mlx_lm.tuner.utils
    import mlx_lm.utils  # noqa: F401


@contextlib.contextmanager
def _keyed_init() -> Iterator[None]:
    """Give mlx's random initialisers an explicit key while a model is built on this thread.

    Drawing from mlx's global random state on a thread other than the main one makes the process
    abort at exit (about 8 runs in 10 here, mlx 0.32); building an mlx-lm model draws initial
    weights that its checkpoint then replaces. So, for the build only, every draw without a key
    gets one. Runs are sampled with keys of their own (``_sampler``)."""
    import mlx.core as mx

    names = ("uniform", "normal", "truncated_normal", "bernoulli")
    real = {n: getattr(mx.random, n) for n in names}
    key = [mx.random.key(0)]

    def keyed(fn: Any) -> Any:
        def draw(*args: Any, **kw: Any) -> Any:
            if kw.get("key") is None:
                key[0], kw["key"] = mx.random.split(key[0])
            return fn(*args, **kw)

        return draw

    for n, fn in real.items():
        setattr(mx.random, n, keyed(fn))
    try:
        yield
    finally:
        for n, fn in real.items():
            setattr(mx.random, n, fn)


def _sampler(temperature: float) -> Callable[[Any], Any]:
    """Greedy at temperature 0; else a categorical draw with this run's own key (never mlx's
    global random state: see ``_keyed_init``)."""
    import random

    import mlx.core as mx

    if temperature <= 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    key = mx.random.key(random.getrandbits(63))

    def sample(logprobs: Any) -> Any:
        nonlocal key
        key, sub = mx.random.split(key)
        return mx.random.categorical(logprobs * (1.0 / temperature), key=sub)

    return sample


class _Job:
    """A run's state on the generation thread: its token generator and what it has produced."""

    def __init__(self, req: GenRequest, run: Run) -> None:
        self.req, self.run = req, run
        self.steps: Iterator[tuple[Any, Any]] | None = None
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_tokens = 0
        self.logprob_sum = 0.0
        self.started = self.first = 0.0
        self.prompt_eval_ms = 0.0
        self.load_ms = 0.0


class LocalModel:
    """An mlx-lm model directory (default: SmolLM2-135M-Instruct, converted once) and its adapters."""

    def __init__(self, model_path: str = "", name: str = DEFAULT_MODEL,
                 adapters: AdapterRegistry | None = None) -> None:
        self.model_path, self.name = model_path, name
        self.adapters = adapters or AdapterRegistry()
        self.path: Path | None = None
        self.load_ms = 0.0
        self._load_reported = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._loaded = threading.Event()
        self._error: BaseException | None = None
        self._model: Any = None
        self._tok: Any = None
        self._config: dict[str, Any] = {}
        self._with_adapter: dict[str, tuple[tuple[str, int], Any]] = {}  # name -> ((path, mtime), model)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the generation thread, which loads the model first (idempotent). On the main thread
        this imports mlx-lm first (``preload``, a few seconds, once per process)."""
        if threading.current_thread() is threading.main_thread():
            with contextlib.suppress(ImportError):  # the thread reports the missing extra on use
                preload()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=f"mlx-gen-{self.name}", daemon=True)
                self._thread.start()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the model is loaded; raise the load's error if it failed."""
        self.start()
        if not self._loaded.wait(timeout):
            raise TimeoutError(f"{self.name} did not load within {timeout} s")
        if self._error is not None:
            raise self._error

    @property
    def error(self) -> BaseException | None:
        """Why the model could not load (None: loaded, or still loading)."""
        return self._error

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set() and self._error is None

    # -- facts (valid once loaded) -----------------------------------------------------------
    @property
    def parameter_count(self) -> int:
        from mlx.utils import tree_flatten

        flat: Any = tree_flatten(self._model.parameters()) if self._model is not None else []
        return sum(v.size for _, v in flat)

    @property
    def size_bytes(self) -> int:
        from mlx.utils import tree_flatten

        flat: Any = tree_flatten(self._model.parameters()) if self._model is not None else []
        return sum(v.nbytes for _, v in flat)

    @property
    def size_vram(self) -> int:
        """Bytes in accelerator memory: all of it on a Metal GPU (unified memory), none on a CPU."""
        import mlx.core as mx

        return self.size_bytes if mx.default_device() == mx.gpu else 0

    @property
    def context_length(self) -> int:
        return int(self._config.get("max_position_embeddings", 0) or 0)

    @property
    def chat_template(self) -> str:
        return str(getattr(self._tok, "chat_template", "") or "") if self._tok is not None else ""

    @property
    def quantization(self) -> str:
        q = self._config.get("quantization")
        if isinstance(q, dict) and "bits" in q:
            return f"Q{q['bits']}"
        return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(self._config.get("torch_dtype")), "F32")

    @property
    def family(self) -> str:
        return str(self._config.get("model_type", "llama"))

    def count_tokens(self, text: str) -> int:
        self.wait_loaded()
        return len(self._tok.encode(text, add_special_tokens=False))

    # -- runs ------------------------------------------------------------------------------------
    def run(self, req: GenRequest) -> Run:
        """A run fed to this thread's caller (iterate it with ``for``)."""
        return self._submit(req, Run(asynchronous=False))

    def arun(self, req: GenRequest) -> Run:
        """A run fed to the running loop (iterate it with ``async for``); call on the loop."""
        return self._submit(req, Run(asynchronous=True))

    def generate(self, req: GenRequest) -> Generation:
        return self.run(req).text()

    def _submit(self, req: GenRequest, run: Run) -> Run:
        self.start()
        self._inbox.put(_Job(req, run))
        return run

    def close(self, timeout: float = 10.0) -> None:
        """Stop the generation thread after the runs it has; wait for it (mlx aborts the process
        at exit if its thread-local streams are still being torn down by a live thread)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._inbox.put(None)
            thread.join(timeout)

    # -- the generation thread -----------------------------------------------------------------
    def _serve(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._error = exc
        self._loaded.set()
        active: list[_Job] = []
        while True:
            try:
                job = self._inbox.get(block=not active)
            except queue.Empty:
                job = None
            else:
                if job is None:
                    for left in active:
                        self._close(left)
                        left.run.emit("error", RuntimeError(f"{self.name} is shutting down"))
                    return
                active.append(job)
                continue  # take everything waiting before stepping: new runs join this round
            for job in list(active):
                if not self._step(job):
                    active.remove(job)

    def _load(self) -> None:
        try:
            preload()  # a no-op when the main thread did it
            import mlx_lm
        except ImportError:
            raise ExtraMissing("local models (mlx-lm)", "mlx") from None
        t0 = time.perf_counter()
        self.path = resolve_model_dir(self.model_path)
        with _keyed_init():
            loaded: Any = mlx_lm.load(str(self.path), return_config=True)
        self._model, self._tok, self._config = loaded
        self.load_ms = (time.perf_counter() - t0) * 1000

    def _step(self, job: _Job) -> bool:
        """Advance ``job`` by one token (its first step prefills); False once it is finished."""
        if job.run.cancelled.is_set():
            self._close(job)
            return False
        try:
            if job.steps is None:
                self._begin(job)
            assert job.steps is not None
            step: Any = next(job.steps, (None, None))
            token, logprobs = step
            now = time.perf_counter()
            if not job.ids and job.first == 0.0:
                job.first, job.prompt_eval_ms = now, (now - job.started) * 1000
            if token is None or token in self._tok.eos_token_ids:
                self._finish(job, "stop" if token is not None else "length", now)
                return False
            job.ids.append(token)
            job.logprob_sum += float(logprobs[token].item())
            text = self._tok.decode(job.ids)
            if not text.endswith("\ufffd") and len(text) > len(job.sent):  # wait out a split UTF-8 character
                piece, job.sent = text[len(job.sent):], text
                job.run.emit("piece", piece)
            if len(job.ids) >= job.req.max_tokens:
                self._finish(job, "length", now)
                return False
            return True
        except Exception as exc:
            self._close(job)
            job.run.emit("error", exc)
            return False

    def _begin(self, job: _Job) -> None:
        if self._error is not None:
            raise self._error
        import mlx.core as mx
        from mlx_lm.generate import generate_step

        job.started = time.perf_counter()
        if not self._load_reported:
            self._load_reported, job.load_ms = True, self.load_ms
        model = self._for_adapter(job.req.adapter)
        req = job.req
        if req.messages is not None:
            ids = self._render(req.messages)
        else:
            ids = self._tok.encode(req.prompt, add_special_tokens=False) or [self._config.get("bos_token_id", 0)]
        ctx = self.context_length or 1 << 30
        budget = max(1, min(req.max_tokens, ctx - 1))
        if len(ids) > ctx - budget:  # left-truncate: the end of a conversation matters most
            ids = ids[len(ids) - (ctx - budget):]
        job.req = msgspec.structs.replace(req, max_tokens=budget)
        job.prompt_tokens = len(ids)
        # This thread's default stream, not mlx-lm's thread-local ``generation_stream``: using that
        # from a second thread also made the process abort at exit (mlx 0.32).
        steps: Any = generate_step(mx.array(ids), model, stream=mx.default_stream(mx.default_device()),
                                   max_tokens=budget, sampler=_sampler(req.temperature))
        job.steps = steps

    def _render(self, messages: list[tuple[str, str]]) -> list[int]:
        if getattr(self._tok, "has_chat_template", False):
            chat = [{"role": r, "content": c} for r, c in messages]
            return list(self._tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
        text = "".join(f"{r}: {c}\n" for r, c in messages) + "assistant: "
        return list(self._tok.encode(text, add_special_tokens=True))

    def _for_adapter(self, name: str) -> Any:
        """The base model, or a model sharing its weight arrays with ``name``'s LoRA layers on top."""
        if not name:
            return self._model
        path = self.adapters.path(name)
        stamp = (str(path), (path / "adapters.safetensors").stat().st_mtime_ns)
        cached = self._with_adapter.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        from mlx_lm.tuner.utils import load_adapters
        from mlx_lm.utils import load_model

        assert self.path is not None
        with _keyed_init():
            model, _ = load_model(self.path, lazy=True)  # the structure; its own weights are never read
            model.update(self._model.parameters())  # the base's arrays, shared, not copied
            load_adapters(model, str(path))
        model.eval()
        self._with_adapter[name] = (stamp, model)
        return model

    def _finish(self, job: _Job, reason: Literal["stop", "length"], now: float) -> None:
        text = self._tok.decode(job.ids)
        if len(text) > len(job.sent):
            job.run.emit("piece", text[len(job.sent):])
        self._close(job)
        n = len(job.ids)
        job.run.emit("done", Generation(
            text=text, prompt_tokens=job.prompt_tokens, completion_tokens=n, finish_reason=reason,
            load_ms=job.load_ms, prompt_eval_ms=job.prompt_eval_ms, eval_ms=(now - job.first) * 1000,
            logprob_mean=job.logprob_sum / n if n else None))

    @staticmethod
    def _close(job: _Job) -> None:
        if job.steps is not None and (close := getattr(job.steps, "close", None)):
            with contextlib.suppress(Exception):
                close()
        job.steps = None


_MODELS: dict[str, LocalModel] = {}
_MODELS_LOCK = threading.Lock()


@atexit.register
def _close_all() -> None:
    with _MODELS_LOCK:
        models = list(_MODELS.values())
    for m in models:
        m.close()


def exit_now_if_models_ran(status: int) -> None:
    """End the process with ``status`` without C++ static destructors if a generation thread ran.

    mlx 0.32 aborts the process at exit ("terminate called without an active exception", status
    134) in about half the runs after a thread other than the main one evaluated a model: its
    per-thread stream state is torn down after that thread is gone. Python's own shutdown work
    (atexit, flushing) is done first; only the C++ teardown is skipped. A no-op otherwise."""
    if not any(m._thread is not None or m._loaded.is_set() for m in list(_MODELS.values())):
        return
    import logging
    import os
    import sys

    _close_all()
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


def get_local_model(model_path: str = "", name: str = DEFAULT_MODEL) -> LocalModel:
    """The process-wide model for ``model_path`` ("" = the default model): one load, one thread,
    shared by every pool and the Ollama node in this process."""
    key = str(Path(model_path).expanduser().resolve()) if model_path else ""
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = LocalModel(model_path, name)
        return _MODELS[key]
