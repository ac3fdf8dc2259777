"""``homeskillet node``: the Ollama HTTP API (provider-apis.md §5) served by local MLX inference.

Any Ollama client can use it: NDJSON streams by default, durations in nanoseconds, ``{"error"}``
with Ollama's statuses and wording (in-band once a stream has started). Inference runs in a worker
thread, so the loop never blocks; the default generator is the seeded ``TinyModel``, built on
first use, and every advertised name is served by the one generator.

Prompts: ``/api/generate`` uses the prompt verbatim (a ``system``, unless ``raw``, becomes a first
line ``system: …``); ``/api/chat`` renders messages with ``CHAT_TEMPLATE`` (``render_chat``).
``/api/ps`` is Ollama's bookkeeping: a name loads on first use and stays ``keep_alive`` after its
last request (5m; negative = forever; 0 = unload). Pending = admitted and not finished; more than
``max_queue`` pending gets a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import re
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from homeskillet import __version__
from homeskillet.providers.mlx_model import TinyConfig, get_model

__all__ = ["CHAT_TEMPLATE", "Generator", "create_node_app", "parse_keep_alive", "render_chat", "serve_node"]

CHAT_TEMPLATE = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: "
_TEMPERATURE = 0.8  # Ollama's default
_BUSY = "server busy, please try again. maximum pending requests exceeded"
_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Generator(Protocol):
    """What the node needs from a model: a name, a token count and a stream of text pieces."""

    @property
    def name(self) -> str: ...

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...


class _Message(msgspec.Struct):
    role: str = "user"
    content: str | None = None


class _Request(msgspec.Struct):
    """The request fields the node honours (generate, chat, show); unknown fields are ignored."""

    model: str = ""
    name: str = ""  # /api/show's older spelling of ``model``
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    messages: list[_Message] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None


class _Run(msgspec.Struct, kw_only=True):
    """Counts and timings of one request, named and measured (nanoseconds) as Ollama reports them."""

    done: bool = True
    done_reason: str = "stop"
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0
    eval_count: int = 0
    eval_duration: int = 0


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """Render ``(role, content)`` pairs with ``CHAT_TEMPLATE``: one ``role: content`` line each."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant: "


def parse_keep_alive(value: float | str | None) -> float:
    """Seconds a model stays loaded, from seconds or a Go duration ("5m", "1h30m"); <0 = forever."""
    if value is None:
        return 300.0
    if isinstance(value, str):
        text = value.strip()
        sign, body = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.lstrip("+"))
        with contextlib.suppress(ValueError):
            value = sign * float(body)  # Ollama's CLI accepts bare numbers as seconds
        if isinstance(value, str):
            parts = _DURATION.findall(body)
            if not parts or "".join(a + u for a, u in parts) != body:
                raise ValueError(f"invalid duration {text!r}")
            value = sign * sum(float(a) * _UNIT_S[u] for a, u in parts)
    return math.inf if value < 0 else float(value)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status_code=status, media_type="application/json")


def _error(message: str, status: int) -> Response:
    return _json({"error": message}, status)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(min(ts, 2**33), UTC).isoformat().replace("+00:00", "Z")


def _canonical(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


async def _pieces(gen: Generator, prompt: str, max_tokens: int, temperature: float) -> AsyncGenerator[str]:
    """Drain ``gen.stream`` in one worker thread, handing each piece to the loop as it comes."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | Exception | None] = asyncio.Queue()
    stop = threading.Event()  # the consumer left: the worker stops at the next piece

    def put(item: str | Exception | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        pieces = gen.stream(prompt, max_tokens, temperature)
        try:
            for piece in pieces:
                if stop.is_set():
                    break
                put(piece)
        except Exception as exc:
            put(exc)
        finally:
            if close := getattr(pieces, "close", None):
                close()
            put(None)

    worker = asyncio.ensure_future(asyncio.to_thread(work))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        await worker  # the model is free before the next request takes the slot


class _NDJSON(StreamingResponse):
    """An NDJSON stream that runs ``release`` however it ends, even if it never started."""

    def __init__(self, lines: AsyncGenerator[bytes], release: Callable[[], None]) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self._lines, self._release = lines, release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self._lines.aclose()
            self._release()


class _Node:
    def __init__(self, gen: Generator | None, models: list[str] | None, max_queue: int, parallel: int,
                 num_predict: int) -> None:
        self._gen = gen  # None: build the default TinyModel on first use
        self._names = dict.fromkeys(_canonical(m) for m in models or [gen.name if gen else TinyConfig().name])
        self._expires: dict[str, float] = {}  # loaded name -> unix time it unloads
        self._pending, self._max_queue, self._num_predict = 0, max_queue, num_predict
        self._slots = asyncio.Semaphore(parallel)  # Ollama's OLLAMA_NUM_PARALLEL
        self._build_lock = asyncio.Lock()
        self._modified = time.time()

    async def generator(self) -> Generator:
        async with self._build_lock:
            if self._gen is None:
                self._gen = await asyncio.to_thread(get_model)
        return self._gen

    async def _card(self, name: str) -> dict[str, Any]:
        gen = await self.generator()
        size, params = getattr(gen, "size_bytes", 0), getattr(gen, "parameter_count", 0)
        details = {"parent_model": "", "format": "mlx", "family": "homeskillet", "families": ["homeskillet"],
                   "parameter_size": f"{params / 1e6:.2f}M", "quantization_level": "F32"}
        digest = hashlib.sha256(f"{name}\0{gen.name}\0{size}".encode()).hexdigest()
        return {"name": name, "model": name, "modified_at": _iso(self._modified), "size": size,
                "digest": digest, "details": details}

    async def tags(self, request: Request) -> Response:
        return _json({"models": [await self._card(n) for n in self._names]})

    async def ps(self, request: Request) -> Response:
        self._expires = {n: t for n, t in self._expires.items() if t > time.time()}
        gen, loaded = await self.generator(), list(self._expires.items())
        extra = {
            "size_vram": getattr(gen, "size_vram", 0),
            "context_length": getattr(gen, "context_length", 0),
        }
        return _json({"models": [await self._card(n) | extra | {"expires_at": _iso(t)} for n, t in loaded]})

    async def show(self, request: Request) -> Response:
        req = await self._decode(request)
        if isinstance(req, Response):
            return req
        card, gen = await self._card(_canonical(req.model)), await self.generator()
        params = f"num_predict {self._num_predict}\ntemperature {_TEMPERATURE}"
        info = {
            "general.architecture": "homeskillet",
            "general.parameter_count": getattr(gen, "parameter_count", 0),
            "homeskillet.context_length": getattr(gen, "context_length", 0),
        }
        modelfile = f'FROM {req.model}\nTEMPLATE """{CHAT_TEMPLATE}"""\n'
        return _json({"modelfile": modelfile + "".join(f"PARAMETER {p}\n" for p in params.splitlines()),
                      "parameters": params, "template": CHAT_TEMPLATE, "details": card["details"],
                      "model_info": info, "capabilities": ["completion"], "modified_at": card["modified_at"]})

    async def _decode(self, request: Request) -> _Request | Response:
        try:
            req = msgspec.json.decode(await request.body(), type=_Request)
        except msgspec.DecodeError as exc:
            return _error(str(exc), 400)
        req.model = req.model or req.name
        if not req.model:
            return _error("model is required", 400)
        if _canonical(req.model) not in self._names:
            return _error(f'model "{req.model}" not found, try pulling it first', 404)
        return req

    async def complete(self, request: Request, chat: bool) -> Response:
        """/api/generate and /api/chat: admit, infer off-loop, answer as NDJSON or one object."""
        started, run = time.perf_counter_ns(), _Run()
        req = await self._decode(request)
        if isinstance(req, Response):
            return req
        opts, name = req.options or {}, _canonical(req.model)
        try:
            keep_alive = parse_keep_alive(req.keep_alive)
            max_tokens = int(opts.get("num_predict", self._num_predict))
            temperature = float(opts.get("temperature", _TEMPERATURE))
        except (TypeError, ValueError) as exc:
            return _error(str(exc), 400)
        max_tokens = max_tokens if max_tokens >= 0 else 1 << 20  # -1: until the context is full
        if chat:
            prompt = render_chat([(m.role, m.content or "") for m in req.messages]) if req.messages else ""
        else:
            prompt = req.prompt if req.raw or not req.system else f"system: {req.system}\n{req.prompt}"

        def chunk(piece: str, **extra: Any) -> bytes:
            body = {"message": {"role": "assistant", "content": piece}} if chat else {"response": piece}
            return msgspec.json.encode({"model": req.model, "created_at": _iso(time.time()), **body, **extra})

        def final(text: str) -> bytes:
            run.total_duration = time.perf_counter_ns() - started
            return chunk(text, **msgspec.structs.asdict(run))

        if not prompt:  # Ollama: an empty prompt only loads (or, with keep_alive 0, unloads) the model
            await self._load(name)
            self._keep(name, keep_alive)
            body = chunk("", done=True, done_reason="unload" if keep_alive == 0 else "load")
            return Response(body, media_type="application/json")
        if self._pending >= self._max_queue:
            return _error(_BUSY, 503)
        self._pending += 1

        def release() -> None:  # called exactly once, however the request ends
            self._pending -= 1
            self._keep(name, keep_alive)

        pieces = self._infer(run, name, prompt, max_tokens, temperature)
        if req.stream:
            async def lines() -> AsyncGenerator[bytes]:
                async with contextlib.aclosing(pieces):
                    try:
                        async for piece in pieces:
                            yield chunk(piece, done=False) + b"\n"
                        yield final("") + b"\n"
                    except Exception as exc:  # headers are sent: report in-band, as Ollama does
                        yield msgspec.json.encode({"error": str(exc)}) + b"\n"

            return _NDJSON(lines(), release)
        try:
            async with contextlib.aclosing(pieces):
                text = "".join([piece async for piece in pieces])
        except Exception as exc:
            return _error(str(exc), 500)
        finally:
            release()
        return Response(final(text), media_type="application/json")

    async def _infer(self, run: _Run, name: str, prompt: str, max_tokens: int, temp: float,
                     ) -> AsyncGenerator[str]:
        async with self._slots:
            run.load_duration = await self._load(name)
            gen = await self.generator()
            run.prompt_eval_count = gen.count_tokens(prompt)
            start = first = time.perf_counter_ns()
            async with contextlib.aclosing(_pieces(gen, prompt, max_tokens, temp)) as stream:
                async for piece in stream:
                    if run.eval_count == 0:
                        first = time.perf_counter_ns()
                        run.prompt_eval_duration = first - start
                    run.eval_count += 1
                    yield piece
            run.eval_duration = time.perf_counter_ns() - first
            run.done_reason = "length" if run.eval_count >= max_tokens else "stop"

    async def _load(self, name: str) -> int:
        """Mark ``name`` loaded, never expiring while busy; the nanoseconds that took."""
        start = time.perf_counter_ns()
        await self.generator()
        self._expires[name] = math.inf
        return time.perf_counter_ns() - start

    def _keep(self, name: str, keep_alive: float) -> None:
        if keep_alive == 0:
            self._expires.pop(name, None)
        elif name in self._expires:  # only a model that did load stays loaded
            self._expires[name] = time.time() + keep_alive


def create_node_app(
    generator: Generator | None = None, models: list[str] | None = None, *, max_queue: int = 512,
    num_parallel: int = 1, num_predict: int = 64,
) -> Starlette:
    """An ASGI app speaking Ollama's API, backed by ``generator`` (default: the local TinyModel)."""
    node = _Node(generator, models, max_queue, num_parallel, num_predict)

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return _json({"version": __version__})

    return Starlette(routes=[
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/generate", functools.partial(node.complete, chat=False), methods=["POST"]),
        Route("/api/chat", functools.partial(node.complete, chat=True), methods=["POST"]),
        Route("/api/show", node.show, methods=["POST"]),
        Route("/api/tags", node.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", node.ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET", "HEAD"]),
    ])


def serve_node(
    host: str = "127.0.0.1", port: int = 11434, *, generator: Generator | None = None,
    models: list[str] | None = None, max_queue: int = 512, log_level: str = "info",
) -> None:
    """Serve the node with uvicorn until interrupted (``homeskillet node``)."""
    import uvicorn

    app = create_node_app(generator, models, max_queue=max_queue)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
