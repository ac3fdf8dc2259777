"""The ``ollama`` connector beyond the generic contract: against ``homeskillet node`` on a real
port, and its pure half on payloads recorded from Ollama's API documentation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import msgspec
import pytest
from toy_model import get_model

from homeskillet.errors import BadRequest, HomeskilletError, NoCapacity, ProviderError, RateLimited
from homeskillet.node import create_node_app, render_chat
from homeskillet.providers.base import Allocation, AllocationRequest, InferRequest
from homeskillet.providers.ollama import NodeLoad, OllamaConnector
from homeskillet.providers.ollama_api import canonical, decode_chunk, decode_models, error_message, raise_for_ollama
from homeskillet.testing import serve_asgi
from homeskillet.wire import Message

MODEL = "hs-tiny"


def req(prompt: str, **kw: object) -> InferRequest:
    return msgspec.convert({"strike_id": "t", "model": MODEL, "prompt": prompt, "max_tokens": 12, **kw}, InferRequest)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_asgi(create_node_app(get_model(), models=[MODEL, "other:7b"]), "/api/version") as base:
        yield base


# -- against homeskillet node -----------------------------------------------------------------------


async def test_infer_is_greedy_local_inference(url: str) -> None:
    conn = OllamaConnector(base_url=url)
    try:
        res = await conn.infer(req("Hello"))
        prompt = render_chat([("user", "Hello")])  # the node renders a prompt as a one-message chat
        want = get_model().generate(prompt, max_tokens=12)
        assert res.text == want.text
        assert res.prompt_tokens == get_model().count_tokens(prompt) and res.completion_tokens == 12
        assert res.model == MODEL and res.billed_usd is None
    finally:
        await conn.close()


async def test_context_goes_to_chat(url: str) -> None:
    conn = OllamaConnector(base_url=url)
    try:
        context = [Message(role="system", content="be brief"), Message(role="assistant", content="ok")]
        res = await conn.infer(req("hi there", context=context))
        prompt = render_chat([("system", "be brief"), ("assistant", "ok"), ("user", "hi there")])
        assert res.text == get_model().generate(prompt, max_tokens=12).text
        assert res.prompt_tokens == get_model().count_tokens(prompt)
    finally:
        await conn.close()


async def test_stream_and_plain_agree(url: str) -> None:
    conn = OllamaConnector(base_url=url)
    try:
        pieces = [p async for p in conn.stream(req("Stream me"))]
        assert len(pieces) == 12  # one NDJSON line per token
        assert "".join(pieces) == (await conn.infer(req("Stream me"))).text
        streamed = await conn.generate(MODEL, "abc", options={"num_predict": 5, "temperature": 0}, stream=True)
        plain = await conn.generate(MODEL, "abc", options={"num_predict": 5, "temperature": 0})
        assert (streamed.text, streamed.eval_count, streamed.prompt_eval_count) == (
            plain.text, plain.eval_count, plain.prompt_eval_count)
        chat = await conn.chat(MODEL, [("user", "abc")], options={"num_predict": 5, "temperature": 0}, stream=True)
        assert chat.text == get_model().generate(render_chat([("user", "abc")]), max_tokens=5).text
        assert streamed.total_duration >= streamed.eval_duration > 0 and streamed.tokens_per_s > 0
    finally:
        await conn.close()


async def test_health_quote_and_warm_models() -> None:
    with serve_asgi(create_node_app(get_model(), models=[MODEL, "other:7b"]), "/api/version") as base:
        conn = OllamaConnector(base_url=base, region="lab", gpu_model="M2", parallel=2)
        try:
            cold = await conn.health()
            assert cold.ok and cold.warm_models == [] and cold.active == 0 and cold.load == 0.0
            assert conn.models == ["hs-tiny:latest", "other:7b"]
            await conn.infer(req("warm up"))
            warm = await conn.health()
            assert warm.warm_models == ["hs-tiny", "hs-tiny:latest"]  # from /api/ps, not from our own bookkeeping
            [offer] = await conn.quote(AllocationRequest(model="other:7b"))
            assert offer.usd_per_hour == offer.usd_per_mtok_in == offer.usd_per_mtok_out == 0.0
            assert offer.models == ["hs-tiny:latest", "other:7b"] and offer.warm_models == ["hs-tiny", "hs-tiny:latest"]
            assert offer.available == 2 and offer.region == "lab" and offer.gpu_model == "M2"
            assert await conn.quote(AllocationRequest(model="absent")) == []
        finally:
            await conn.close()


async def test_keep_alive_zero_unloads() -> None:
    with serve_asgi(create_node_app(get_model(), models=[MODEL]), "/api/version") as base:
        conn = OllamaConnector(base_url=base, keep_alive=0)
        try:
            await conn.infer(req("and gone"))
            assert (await conn.health()).warm_models == []
        finally:
            await conn.close()


async def test_model_map_names_the_node_model(url: str) -> None:
    conn = OllamaConnector(base_url=url, model_map={"tiny-7b": "other:7b"})
    try:
        assert conn.resolve("tiny-7b") == "other:7b" and conn.resolve("hs-tiny") == "hs-tiny:latest"
        done = await conn.generate("tiny-7b", "x", options={"num_predict": 2, "temperature": 0})
        want = get_model().generate(render_chat([("user", "x")]), max_tokens=2).text
        assert done.model == "other:7b" and done.text == want
    finally:
        await conn.close()


async def test_unknown_model_is_a_404_naming_it(url: str) -> None:
    conn = OllamaConnector(base_url=url)
    try:
        with pytest.raises(ProviderError) as err:
            await conn.infer(req("x", model="nope"))
        assert err.value.http_status == 404 and err.value.retryable  # another node may hold it
        assert 'model "nope" not found' in str(err.value) and url in str(err.value)
    finally:
        await conn.close()


async def test_full_queue_is_503_and_retryable() -> None:
    with serve_asgi(create_node_app(get_model(), models=[MODEL], max_queue=0), "/api/version") as base:
        conn = OllamaConnector(base_url=base)
        try:
            for call in (conn.infer(req("x")), _drain(conn, req("x"))):
                with pytest.raises(NoCapacity) as err:
                    await call
                assert err.value.http_status == 503 and err.value.retryable
                assert "maximum pending requests exceeded" in str(err.value)
            assert conn.load.active == 0 and conn.load.ewma_ms is None  # failures are not latency samples
        finally:
            await conn.close()


async def _drain(conn: OllamaConnector, r: InferRequest) -> list[str]:
    return [p async for p in conn.stream(r)]


class _Failing:
    """The real model, failing after two tokens: the node reports it in-band once streaming."""

    name = MODEL

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        pieces = get_model().stream(prompt, max_tokens, temperature)
        yield next(pieces)
        yield next(pieces)
        raise RuntimeError("CUDA error: out of memory")

    def count_tokens(self, text: str) -> int:
        return get_model().count_tokens(text)


async def test_error_inside_the_stream() -> None:
    with serve_asgi(create_node_app(_Failing(), models=[MODEL]), "/api/version") as base:
        conn = OllamaConnector(base_url=base)
        try:
            got: list[str] = []
            with pytest.raises(ProviderError) as err:
                async for piece in conn.stream(req("boom")):
                    got.append(piece)
            assert len(got) == 2 and err.value.http_status == 200  # the status said OK; the line did not
            assert "out of memory" in str(err.value) and err.value.retryable
            with pytest.raises(ProviderError, match="out of memory") as plain:
                await conn.infer(req("boom"))
            assert plain.value.http_status == 500
        finally:
            await conn.close()


class _Gated:
    """The real model, holding each token until the test lets it go: load is observed, not slept on."""

    name = MODEL

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        for piece in get_model().stream(prompt, max_tokens, temperature):
            if not self.gate.acquire(timeout=30):
                raise RuntimeError("the test never opened the gate")
            yield piece

    def count_tokens(self, text: str) -> int:
        return get_model().count_tokens(text)


async def test_load_score_counts_active_requests_and_latency() -> None:
    gen = _Gated()
    with serve_asgi(create_node_app(gen, models=[MODEL]), "/api/version") as base:
        conn = OllamaConnector(base_url=base, ewma_alpha=0.5)
        try:
            stream = conn.stream(req("slow", max_tokens=3))
            gen.gate.release()
            first = await asyncio.wait_for(anext(stream), 30)
            busy = await conn.health()
            assert first and busy.active == 1 and busy.load > 0
            gen.gate.release(2)
            assert len([first, *[p async for p in stream]]) == 3
            idle = await conn.health()
            assert idle.active == 0 and idle.load == 0.0
            assert conn.load.ewma_ms is not None and conn.load.ewma_ms > 0
        finally:
            await conn.close()


async def test_unreachable_node_is_unhealthy_and_retryable() -> None:
    conn = OllamaConnector(base_url="http://127.0.0.1:9", name="gone")  # discard port: nothing listens
    try:
        health = await conn.health()
        assert not health.ok and "gone: cannot reach the node" in health.detail
        with pytest.raises(ProviderError, match="gone: cannot reach the node") as err:
            await conn.infer(req("x"))
        assert err.value.retryable
        with pytest.raises(ProviderError):
            await conn.quote(AllocationRequest())
    finally:
        await conn.close()


async def test_bad_arguments_are_refused(url: str) -> None:
    with pytest.raises(HomeskilletError, match="either client or transport"):
        OllamaConnector(client=httpx.AsyncClient(), transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(HomeskilletError, match="parallel must be at least 1"):
        OllamaConnector(parallel=0)
    conn = OllamaConnector(base_url=url)
    try:
        alloc = Allocation(allocation_id="a-1", provider="vastai")
        with pytest.raises(BadRequest, match="serves without allocations"):
            await conn.infer(req("x", allocation=alloc))
    finally:
        await conn.close()


# -- recorded payloads (Ollama's docs/api.md), through an injected transport ---------------------

GEN_LINES = [
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":"The","done":false}',
    b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","response":" sky","done":false}',
    b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"","done":true,"done_reason":"stop",'
    b'"context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,'
    b'"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}',
]
TAGS = (b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","modified_at":"2024-11-04T14:56:49Z",'
        b'"size":2019393189,"digest":"a80c4f17acd5","details":{"format":"gguf","family":"llama","families":null,'
        b'"parameter_size":"3.2B","quantization_level":"Q4_K_M"}},{"name":"codellama:13b","modified_at":'
        b'"2023-11-04T14:56:49.277302595-07:00","size":7365960935,"digest":"9f438cb9cd58","details":{}}]}')
PS = (b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":5137025024,"digest":"2ae6f6dd7a3d",'
      b'"details":{"format":"gguf"},"expires_at":"2024-06-04T14:38:31.83753-07:00","size_vram":5137025024}]}')


def recorded(routes: dict[str, tuple[int, bytes]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        status, body = routes[request.url.path]
        kind = "application/x-ndjson" if b"\n" in body else "application/json"
        return httpx.Response(status, content=body, headers={"content-type": kind})

    return httpx.MockTransport(handle)


async def test_cold_load_is_noted_and_stats_are_ollamas() -> None:
    routes = {"/api/generate": (200, b"\n".join(GEN_LINES) + b"\n"), "/api/tags": (200, TAGS), "/api/ps": (200, PS)}
    conn = OllamaConnector(transport=recorded(routes), name="rec")
    try:
        done = await conn.generate("llama3.2", "Why is the sky blue?", stream=True)
        assert done.text == "The sky" and done.done_reason == "stop" and done.load_duration == 6338219291
        assert done.prompt_eval_count == 26 and done.eval_count == 259
        assert done.tokens_per_s == pytest.approx(259 / 4.232710)
        assert conn.cold_loads == 1  # 6.3 s of load_duration: a cold start
        health = await conn.health()
        assert conn.models == ["llama3.2:latest", "codellama:13b"]
        assert health.warm_models == ["llama3.2", "llama3.2:latest"]
    finally:
        await conn.close()


@pytest.mark.parametrize(("status", "body", "kind", "text"), [
    (503, b'{"error":"server busy, please try again.  maximum pending requests exceeded"}', NoCapacity, "server busy"),
    (429, b'{"error":"too many requests"}', RateLimited, "too many requests"),
    (500, b"<html>Bad Gateway</html>", ProviderError, "<html>Bad Gateway</html>"),
    (400, b'{"error":"invalid options: num_ctx"}', ProviderError, "invalid options"),
])
async def test_error_envelopes(status: int, body: bytes, kind: type[ProviderError], text: str) -> None:
    conn = OllamaConnector(transport=recorded({"/api/generate": (status, body)}), name="rec")
    try:
        with pytest.raises(kind, match=text) as err:
            await conn.infer(req("x"))
        assert type(err.value) is kind and err.value.http_status == status
    finally:
        await conn.close()


async def test_a_stream_cut_short_is_an_error() -> None:
    conn = OllamaConnector(transport=recorded({"/api/generate": (200, b"\n".join(GEN_LINES[:2]) + b"\n")}))
    try:
        with pytest.raises(ProviderError, match="ended before its final chunk"):
            await conn.generate("llama3.2", "x", stream=True)
        with pytest.raises(ProviderError, match="ended before its final chunk"):
            await _drain(conn, req("x"))
    finally:
        await conn.close()


def test_parsers() -> None:
    chat = decode_chunk(b'{"model":"m","message":{"role":"assistant","content":"Hi","images":null},"done":false}')
    assert chat.text == "Hi" and not chat.done
    assert decode_chunk(b'{"error":"boom"}').error == "boom"
    assert decode_chunk(GEN_LINES[-1]).prompt_eval_count == 26
    assert decode_chunk(b'{"done":true}').prompt_eval_count == 0  # absent when the prompt was cached
    with pytest.raises(ProviderError, match="unreadable answer"):
        decode_chunk(b"not json")
    assert [m.id for m in decode_models(TAGS)] == ["llama3.2:latest", "codellama:13b"]
    assert error_message(b'{"error":"x"}') == "x" and error_message(b"") == "(empty body)"
    assert canonical("llama3") == "llama3:latest" and canonical("qwen:7b") == "qwen:7b"
    assert canonical("registry.local:5000/llama3") == "registry.local:5000/llama3:latest"
    with pytest.raises(HomeskilletError, match="n1: nope"):
        raise_for_ollama(404, b'{"error":"nope"}', node="n1")


def test_node_load() -> None:
    load = NodeLoad(alpha=0.5, prior_ms=100.0)
    assert load.load == 0.0 and load.expected_ms() == 100.0
    with load.track():
        assert load.active == 1 and load.load == pytest.approx(0.1)
    load.observe(300.0)
    assert load.ewma_ms is not None
    load.ewma_ms = 200.0
    load.observe(400.0)
    assert load.ewma_ms == 300.0 and load.expected_ms() == 300.0
    with pytest.raises(ValueError, match="ewma_alpha"):
        NodeLoad(alpha=0)
