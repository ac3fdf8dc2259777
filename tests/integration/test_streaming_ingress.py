"""Streaming through each ingress with its official client: the openai SDK on /v1/chat/completions,
the MCP SDK's progress callback on the ``query`` tool, and nats-py on ``hs.query`` with
``Hs-Stream: 1``. The echo engine is held after its first word until the client has seen it, so
each test shows the first chunk arrives while the pool still reports the strike running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
import openai
import pytest
from mcp import ClientSession

from homeskillet.config import HttpSettings
from homeskillet.mcp_ws import websocket_client
from homeskillet.providers.echo import EchoConnector
from homeskillet.runtime import Runtime
from homeskillet.testing import echo_pool, start_runtime
from homeskillet.wire import Answer, AnswerChunk, ErrorReply, Query, decode_answer_stream, encode

PROMPT = "tell me four words"
TEXT = "echo: tell me four words"


@pytest.fixture
async def rt(nats_url: str) -> AsyncIterator[Runtime]:
    async with start_runtime(nats_url, [echo_pool()], http=HttpSettings(listen="127.0.0.1:0")) as runtime:
        yield runtime


def echo(rt: Runtime) -> EchoConnector:
    conn = rt.hosts["echo/standard"].connector
    assert isinstance(conn, EchoConnector)
    return conn


def running(rt: Runtime) -> int:
    return rt.hosts["echo/standard"].active


async def test_openai_client_gets_the_first_chunk_while_the_strike_runs(rt: Runtime) -> None:
    gate = echo(rt).hold(after=1)
    assert rt.http is not None
    seen: list[tuple[str, int]] = []
    async with openai.AsyncOpenAI(base_url=rt.http.url + "/v1", api_key="unused", max_retries=0) as c:
        stream = await c.chat.completions.create(model="gemma-2b", messages=[{"role": "user", "content": PROMPT}],
                                                 stream=True, stream_options={"include_usage": True})
        chunks = []
        async for chunk in stream:
            chunks.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                seen.append((chunk.choices[0].delta.content, running(rt)))
                gate.set()  # the client has its first text: let the engine finish
    assert seen[0] == ("echo: ", 1)  # the first word, while the engine was still held
    assert "".join(text for text, _ in seen) == TEXT
    final = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason == "stop"]
    ext = final[0].model_extra["homeskillet"]  # type: ignore[index]
    assert ext["ttft_ms"] > 0 and ext["strategy"] == "whole+single+fuse:ordered"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_openai_client_sees_a_mid_stream_failure_as_an_error(rt: Runtime) -> None:
    echo(rt).fail_after = 2  # two words out, then the provider fails; there is no other pool
    assert rt.http is not None
    text = ""
    async with openai.AsyncOpenAI(base_url=rt.http.url + "/v1", api_key="unused", max_retries=0) as c:
        stream = await c.chat.completions.create(model="gemma-2b", messages=[{"role": "user", "content": PROMPT}],
                                                 stream=True)
        with pytest.raises(openai.APIError, match="streamed"):
            async for chunk in stream:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "echo: tell "


async def test_openai_error_before_the_first_chunk_is_a_status(rt: Runtime) -> None:
    assert rt.http is not None
    async with openai.AsyncOpenAI(base_url=rt.http.url + "/v1", api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.NotFoundError):
            await c.chat.completions.create(model="no-such-covenant", stream=True,
                                            messages=[{"role": "user", "content": PROMPT}])


@asynccontextmanager
async def mcp_session(rt: Runtime) -> AsyncIterator[ClientSession]:
    assert rt.http is not None
    async with websocket_client(rt.http.url.replace("http://", "ws://") + "/mcp/ws") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            yield session


async def test_mcp_query_sends_the_text_as_progress_notifications(rt: Runtime) -> None:
    gate = echo(rt).hold(after=1)
    seen: list[tuple[float, str, int]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        seen.append((done, message or "", running(rt)))
        gate.set()

    async with mcp_session(rt) as session:
        result = await session.call_tool("query", {"prompt": PROMPT}, progress_callback=progress)
    assert not result.is_error, result
    assert result.structured_content is not None
    assert seen[0] == (6.0, "echo: ", 1)  # the first word, while the engine was still held
    assert "".join(m for _, m, _ in seen) == result.structured_content["text"] == TEXT
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen) and seen[-1][0] == len(TEXT)
    assert result.structured_content["ttft_ms"] > 0


async def test_mcp_query_without_a_progress_token_does_not_stream(rt: Runtime) -> None:
    async with mcp_session(rt) as session:
        result = await session.call_tool("query", {"prompt": PROMPT})
    assert result.structured_content is not None and result.structured_content["text"] == TEXT
    assert result.structured_content["ttft_ms"] is None
    assert echo(rt).streamed == 0  # the strike ran unstreamed (infer)


async def test_nats_client_asks_for_a_streamed_reply(rt: Runtime) -> None:
    gate = echo(rt).hold(after=1)
    nc = await nats.connect(rt.nats_urls[0])
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(rt.subjects.query, encode(Query(prompt=PROMPT)), reply=inbox, headers={"Hs-Stream": "1"})
    chunks: list[AnswerChunk] = []
    while True:
        msg = decode_answer_stream((await sub.next_msg(timeout=10)).data)
        if not isinstance(msg, AnswerChunk):
            break
        if not chunks:
            assert running(rt) == 1  # the first text, while the engine was still held
            gate.set()
        chunks.append(msg)
    await nc.close()
    assert isinstance(msg, Answer) and msg.ttft_ms is not None
    assert "".join(c.text for c in chunks) == msg.text == TEXT
    assert [c.offset for c in chunks] == [sum(len(c.text) for c in chunks[:i]) for i in range(len(chunks))]
    assert {c.query_id for c in chunks} == {msg.query_id}


async def test_nats_streamed_error_ends_the_stream(rt: Runtime) -> None:
    nc = await nats.connect(rt.nats_urls[0])
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(rt.subjects.query, encode(Query(prompt=PROMPT, covenant="no-such")), reply=inbox,
                     headers={"Hs-Stream": "1"})
    msg = await sub.next_msg(timeout=10)
    await nc.close()
    assert msg.headers and msg.headers.get("Nats-Service-Error-Code") == "404"
    assert isinstance(decode_answer_stream(msg.data), ErrorReply)
