"""``homeskillet node``: the Ollama HTTP API (provider-apis.md §5) served by a real local model.

Any Ollama client can use it: NDJSON streams by default, durations in nanoseconds, ``{"error"}``
with Ollama's statuses and wording (in-band once a stream has started). The default generator is
the local mlx-lm model (``homeskillet.localmodel``: SmolLM2-135M-Instruct unless ``model_path``
names another), loaded when the node starts; every advertised chat name is served by it, and a
name ``<base>+<adapter>`` by one of its LoRA adapters. ``/api/embed`` (and the older
``/api/embeddings``) serve all-MiniLM-L6-v2 as ``all-minilm`` (``homeskillet.embeddings``).

Prompts: ``/api/chat`` messages and ``/api/generate`` prompts (with ``system``) go through the
model's chat template, as Ollama does; ``raw`` sends the prompt verbatim. Tokens stream as the
generation thread decodes them. ``/api/ps`` is Ollama's bookkeeping: a name loads on first use and
stays ``keep_alive`` after its last request (5m; negative = forever; 0 = unload). Pending = admitted
and not finished; more than ``max_queue`` pending gets a 503.

A generator is anything with ``name`` and ``arun(GenRequest) -> Run``, like ``LocalModel``; a
simpler one with ``stream(prompt, max_tokens, temperature)`` and ``count_tokens`` (tests' stand-ins)
is run in a worker thread, its messages rendered with ``CHAT_TEMPLATE``.
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
from typing import Any, Protocol, runtime_checkable

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from homeskillet import __version__
from homeskillet.localmodel import Generation, GenRequest, Run, get_local_model, split_model

__all__ = ["CHAT_TEMPLATE", "EMBED_MODEL", "Generator", "SimpleGenerator", "create_node_app", "parse_keep_alive",
           "render_chat", "serve_node"]

CHAT_TEMPLATE = "{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant: "
EMBED_MODEL = "all-minilm:latest"  # Ollama's name for all-MiniLM-L6-v2
_TEMPERATURE = 0.8  # Ollama's default
_BUSY = "server busy, please try again. maximum pending requests exceeded"
_DURATION = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@runtime_checkable
class Generator(Protocol):
    """What the node needs from a model: a name and runs that stream text, then report counts."""

    @property
    def name(self) -> str: ...

    def arun(self, req: GenRequest) -> Run: ...


class SimpleGenerator(Protocol):
    """A plain text generator (a test's stand-in): the node renders chats with ``CHAT_TEMPLATE``."""

    @property
    def name(self) -> str: ...

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int: ...


class _Threaded:
    """A ``SimpleGenerator`` as a ``Generator``: its stream drained in a worker thread per run."""

    def __init__(self, gen: SimpleGenerator) -> None:
        self.gen = gen

    @property
    def name(self) -> str:
        return self.gen.name

    def __getattr__(self, attr: str) -> Any:  # facts the cards report (size_bytes, …), if it has them
        return getattr(self.gen, attr)

    def arun(self, req: GenRequest) -> Run:
        run = Run(asynchronous=True)
        prompt = req.prompt if req.messages is None else render_chat(req.messages)

        def work() -> None:
            pieces = self.gen.stream(prompt, req.max_tokens, req.temperature)
            n, text, start = 0, [], time.perf_counter()
            try:
                prompt_tokens, first = self.gen.count_tokens(prompt), start
                for piece in pieces:
                    if run.cancelled.is_set():
                        break
                    if n == 0:
                        first = time.perf_counter()
                    n += 1
                    text.append(piece)
                    run.emit("piece", piece)
                now = time.perf_counter()
                run.emit("done", Generation(
                    text="".join(text), prompt_tokens=prompt_tokens, completion_tokens=n,
                    finish_reason="length" if n >= req.max_tokens else "stop", load_ms=0.0,
                    prompt_eval_ms=(first - start) * 1000, eval_ms=(now - first) * 1000))
            except Exception as exc:
                run.emit("error", exc)
            finally:
                if close := getattr(pieces, "close", None):
                    close()

        threading.Thread(target=work, name=f"node-{self.name}", daemon=True).start()
        return run


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
    input: str | list[str] | None = None  # /api/embed


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
    def __init__(self, gen: Generator | SimpleGenerator | None, models: list[str] | None, max_queue: int,
                 parallel: int, num_predict: int, model_path: str, embed: bool) -> None:
        if gen is None:
            gen = get_local_model(model_path)
            gen.start()  # load now: the first request should not wait for it
        self._gen: Generator = gen if isinstance(gen, Generator) else _Threaded(gen)
        self._names = dict.fromkeys(_canonical(m) for m in models or [self._gen.name])
        self._embed_name = EMBED_MODEL if embed else ""
        self._embedder: Any = None
        self._embed_lock = threading.Lock()
        self._expires: dict[str, float] = {}  # loaded name -> unix time it unloads
        self._pending, self._max_queue, self._num_predict = 0, max_queue, num_predict
        self._slots = asyncio.Semaphore(parallel)  # Ollama's OLLAMA_NUM_PARALLEL
        self._modified = time.time()

    def _fact(self, attr: str, default: Any = 0) -> Any:
        return getattr(self._gen, attr, default) if getattr(self._gen, "loaded", True) else default

    async def _loaded(self) -> None:
        """Wait (off the loop) until the generator has loaded; raise its load error."""
        if (wait := getattr(self._gen, "wait_loaded", None)) is not None:
            await asyncio.to_thread(wait)

    def _card(self, name: str) -> dict[str, Any]:
        if name == self._embed_name:
            size, params, family, quant = 90_868_376, 22_713_216, "bert", "F32"
        else:
            size, params = self._fact("size_bytes"), self._fact("parameter_count")
            family, quant = self._fact("family", "llama"), self._fact("quantization", "F32")
        details = {"parent_model": "", "format": "mlx", "family": family, "families": [family],
                   "parameter_size": f"{params / 1e6:.2f}M", "quantization_level": quant}
        digest = hashlib.sha256(f"{name}\0{self._gen.name}\0{size}".encode()).hexdigest()
        return {"name": name, "model": name, "modified_at": _iso(self._modified), "size": size,
                "digest": digest, "details": details}

    def _all_names(self) -> list[str]:
        return [*self._names, *([self._embed_name] if self._embed_name else [])]

    async def tags(self, request: Request) -> Response:
        await self._loaded()
        return _json({"models": [self._card(n) for n in self._all_names()]})

    async def ps(self, request: Request) -> Response:
        self._expires = {n: t for n, t in self._expires.items() if t > time.time()}
        extra = {"size_vram": self._fact("size_vram"), "context_length": self._fact("context_length")}
        return _json({"models": [self._card(n) | extra | {"expires_at": _iso(t)} for n, t in self._expires.items()]})

    async def show(self, request: Request) -> Response:
        req = await self._decode(request, embed=True)
        if isinstance(req, Response):
            return req
        name = _canonical(req.model)
        if name == self._embed_name:
            card = self._card(name)
            return _json({"modelfile": f"FROM {req.model}\n", "parameters": "", "template": "",
                          "details": card["details"], "capabilities": ["embedding"],
                          "model_info": {"general.architecture": "bert", "bert.embedding_length": 384},
                          "modified_at": card["modified_at"]})
        await self._loaded()
        card = self._card(name)
        template = self._fact("chat_template", "") or CHAT_TEMPLATE
        params = f"num_predict {self._num_predict}\ntemperature {_TEMPERATURE}"
        arch = card["details"]["family"]
        info = {
            "general.architecture": arch,
            "general.parameter_count": self._fact("parameter_count"),
            f"{arch}.context_length": self._fact("context_length"),
        }
        modelfile = f'FROM {req.model}\nTEMPLATE """{template}"""\n'
        return _json({"modelfile": modelfile + "".join(f"PARAMETER {p}\n" for p in params.splitlines()),
                      "parameters": params, "template": template, "details": card["details"],
                      "model_info": info, "capabilities": ["completion"], "modified_at": card["modified_at"]})

    async def _decode(self, request: Request, *, embed: bool = False) -> _Request | Response:
        try:
            req = msgspec.json.decode(await request.body(), type=_Request)
        except msgspec.DecodeError as exc:
            return _error(str(exc), 400)
        req.model = req.model or req.name
        if not req.model:
            return _error("model is required", 400)
        name = _canonical(req.model)
        base, adapter = split_model(name.removesuffix(":latest"))
        known = name in self._names or (adapter and _canonical(base) in self._names)
        if not known and not (embed and name == self._embed_name):
            return _error(f'model "{req.model}" not found, try pulling it first', 404)
        return req

    async def embed(self, request: Request, legacy: bool = False) -> Response:
        """/api/embed (``input``: a string or a list) and the older /api/embeddings (``prompt``)."""
        started = time.perf_counter_ns()
        req = await self._decode(request, embed=True)
        if isinstance(req, Response):
            return req
        if _canonical(req.model) != self._embed_name:
            return _error("this model does not support embeddings", 400)
        texts = [req.prompt] if legacy else [req.input] if isinstance(req.input, str) else list(req.input or [])
        load_start = time.perf_counter_ns()
        try:
            vectors = await asyncio.to_thread(self._embed, texts)
        except Exception as exc:
            return _error(str(exc), 500)
        if legacy:
            return _json({"embedding": vectors[0] if vectors else []})
        return _json({"model": req.model, "embeddings": vectors,
                      "total_duration": time.perf_counter_ns() - started,
                      "load_duration": time.perf_counter_ns() - load_start if self._embedder is None else 0,
                      "prompt_eval_count": sum(len(t.split()) for t in texts)})

    def _embed(self, texts: list[str]) -> list[list[float]]:
        with self._embed_lock:  # one forward pass at a time; the weights load on first use
            if self._embedder is None:
                from .embeddings import MiniLMEmbedder

                self._embedder = MiniLMEmbedder()
            return self._embedder(texts).tolist() if texts else []

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
        adapter = split_model(name.removesuffix(":latest"))[1]
        if chat:
            messages = [(m.role, m.content or "") for m in req.messages or []]
            gen_req = GenRequest(messages=messages, max_tokens=max_tokens, temperature=temperature, adapter=adapter)
            empty = not messages
        elif req.raw:
            gen_req = GenRequest(prompt=req.prompt, max_tokens=max_tokens, temperature=temperature, adapter=adapter)
            empty = not req.prompt
        else:
            messages = [*([("system", req.system)] if req.system else []), ("user", req.prompt)]
            gen_req = GenRequest(messages=messages, max_tokens=max_tokens, temperature=temperature, adapter=adapter)
            empty = not req.prompt

        def chunk(piece: str, **extra: Any) -> bytes:
            body = {"message": {"role": "assistant", "content": piece}} if chat else {"response": piece}
            return msgspec.json.encode({"model": req.model, "created_at": _iso(time.time()), **body, **extra})

        def final(text: str) -> bytes:
            run.total_duration = time.perf_counter_ns() - started
            return chunk(text, **msgspec.structs.asdict(run))

        if empty:  # Ollama: an empty prompt only loads (or, with keep_alive 0, unloads) the model
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

        pieces = self._infer(run, name, gen_req)
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
            return _error(str(exc), getattr(exc, "status", 500))
        finally:
            release()
        return Response(final(text), media_type="application/json")

    async def _infer(self, run: _Run, name: str, req: GenRequest) -> AsyncGenerator[str]:
        async with self._slots:
            run.load_duration = await self._load(name)
            gen_run = self._gen.arun(req)
            async for piece in gen_run:
                yield piece
            result = gen_run.result
            assert result is not None
            run.prompt_eval_count, run.eval_count = result.prompt_tokens, result.completion_tokens
            run.prompt_eval_duration = int(result.prompt_eval_ms * 1e6)
            run.eval_duration = int(result.eval_ms * 1e6)
            run.done_reason = result.finish_reason

    async def _load(self, name: str) -> int:
        """Mark ``name`` loaded, never expiring while busy; the nanoseconds that took."""
        start = time.perf_counter_ns()
        await self._loaded()
        self._expires[name] = math.inf
        return time.perf_counter_ns() - start

    def _keep(self, name: str, keep_alive: float) -> None:
        if keep_alive == 0:
            self._expires.pop(name, None)
        elif name in self._expires:  # only a model that did load stays loaded
            self._expires[name] = time.time() + keep_alive


def create_node_app(
    generator: Generator | SimpleGenerator | None = None, models: list[str] | None = None, *, max_queue: int = 512,
    num_parallel: int = 1, num_predict: int = 64, model_path: str = "", embed: bool | None = None,
) -> Starlette:
    """An ASGI app speaking Ollama's API, backed by ``generator`` (default: the local mlx-lm model,
    ``model_path`` or SmolLM2-135M-Instruct) and, with ``embed`` (default: with the default
    generator only), MiniLM embeddings as ``all-minilm``."""
    embed = generator is None if embed is None else embed
    node = _Node(generator, models, max_queue, num_parallel, num_predict, model_path, embed)

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return _json({"version": __version__})

    return Starlette(routes=[
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/generate", functools.partial(node.complete, chat=False), methods=["POST"]),
        Route("/api/chat", functools.partial(node.complete, chat=True), methods=["POST"]),
        Route("/api/embed", node.embed, methods=["POST"]),
        Route("/api/embeddings", functools.partial(node.embed, legacy=True), methods=["POST"]),
        Route("/api/show", node.show, methods=["POST"]),
        Route("/api/tags", node.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", node.ps, methods=["GET"]),
        Route("/api/version", version, methods=["GET", "HEAD"]),
    ])


def serve_node(
    host: str = "127.0.0.1", port: int = 11434, *, generator: Generator | SimpleGenerator | None = None,
    models: list[str] | None = None, max_queue: int = 512, log_level: str = "info", model_path: str = "",
) -> None:
    """Serve the node with uvicorn until interrupted (``homeskillet node``)."""
    import uvicorn

    app = create_node_app(generator, models, max_queue=max_queue, model_path=model_path)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
