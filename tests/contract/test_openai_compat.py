"""The OpenAI-compatible client every rented box is reached with (Vast.ai, RunPod, io.net, TPU)."""

from __future__ import annotations

import pytest

from homeskillet.providers.base import InferRequest
from homeskillet.providers.openai_compat import (
    DONE,
    EndpointDown,
    chat_body,
    error_message,
    parse_completion,
    parse_event,
)
from homeskillet.wire import Message

REQ = InferRequest(strike_id="s", model="m", prompt="Why?", max_tokens=7, temperature=0.2,
                   context=[Message(role="system", content="Be brief.")])


def test_the_body_carries_context_then_the_prompt() -> None:
    body = chat_body(REQ, stream=True)
    assert body["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.2 and body["stream"] is True


def test_a_completion_becomes_our_result() -> None:
    raw = (b'{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant",'
           b'"content":"Because."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2}}')
    res = parse_completion(raw, REQ, 12.5)
    assert (res.text, res.prompt_tokens, res.completion_tokens, res.latency_ms) == ("Because.", 9, 2, 12.5)
    no_usage = parse_completion(b'{"choices":[{"message":{"content":"a b c"}}]}', REQ, 1.0)
    assert no_usage.model == "m" and no_usage.completion_tokens == 3  # estimated when usage is absent
    with pytest.raises(EndpointDown, match="unreadable"):
        parse_completion(b"<html>502 Bad Gateway</html>", REQ, 1.0)


def test_server_sent_events_as_vllm_and_proxies_send_them() -> None:
    assert parse_event('data: {"choices":[{"index":0,"delta":{"content":" hi"}}]}') == " hi"
    assert parse_event("data: [DONE]") is DONE
    assert parse_event(": keep-alive") is None and parse_event("") is None
    assert parse_event('data: {"choices":[],"usage":{"prompt_tokens":1}}') is None  # usage-only chunk
    assert parse_event('data: {"choices":[{"delta":{"role":"assistant","content":""}}]}') is None


def test_an_error_event_mid_stream_is_a_dead_box() -> None:
    with pytest.raises(EndpointDown, match="the stream failed: engine dead"):
        parse_event('data: {"error":{"message":"engine dead","type":"InternalServerError"}}')


def test_error_bodies_of_openai_and_fastapi_servers_are_read() -> None:
    assert error_message(b'{"error":{"message":"max_tokens is too large","type":"BadRequestError"}}') == \
        "max_tokens is too large"
    assert "Field required" in error_message(b'{"detail":[{"msg":"Field required"}]}')
    assert error_message(b"<html>oops</html>") == "<html>oops</html>"


def test_the_box_may_know_the_model_by_another_name() -> None:
    assert chat_body(REQ, model="/models/gemma-2b-it")["model"] == "/models/gemma-2b-it"
    assert chat_body(REQ)["model"] == "m"
