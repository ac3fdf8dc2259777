"""Pure parts of the MCP ingress: WebSocket frame parsing, tool schemas, strict argument decoding."""

from __future__ import annotations

import importlib
import json

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp_types import JSONRPCNotification, JSONRPCRequest, JSONRPCResponse

from homeskillet.auth import Principal
from homeskillet.errors import BadRequest, Forbidden
from homeskillet.ingress.mcp_tools import McpTools, QueryArgs, QueryResult, object_schema
from homeskillet.ingress.mcp_websocket import BadFrame, encode_message, parse_frame
from homeskillet.wire import Answer, FragmentOutcome, Reservation

ACME = Principal(tenant="acme", authenticated=True)


def test_a_request_a_notification_and_a_response_parse() -> None:
    assert isinstance(parse_frame('{"jsonrpc": "2.0", "id": 1, "method": "ping"}'), JSONRPCRequest)
    assert isinstance(parse_frame('{"jsonrpc": "2.0", "method": "notifications/initialized"}'), JSONRPCNotification)
    assert isinstance(parse_frame('{"jsonrpc": "2.0", "id": "a", "result": {}}'), JSONRPCResponse)


@pytest.mark.parametrize(("frame", "code", "rid"), [
    ("{", -32700, None),
    ("", -32700, None),
    ('{"jsonrpc": "2.0", "id": 3}', -32600, 3),
    ('{"jsonrpc": "2.0", "id": "x", "method": 5}', -32600, "x"),
    ('{"jsonrpc": "2.0", "id": true, "method": "ping"}', -32600, None),  # a boolean is no id
    ('[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', -32600, None),
    ("42", -32600, None),
])
def test_malformed_frames_get_the_json_rpc_error_to_send(frame: str, code: int, rid: object) -> None:
    with pytest.raises(BadFrame) as bad:
        parse_frame(frame)
    reply = json.loads(encode_message(bad.value.reply))
    assert reply["jsonrpc"] == "2.0" and reply["id"] == rid and reply["error"]["code"] == code


@given(st.text())
def test_any_text_parses_or_becomes_a_json_rpc_error(text: str) -> None:
    try:
        parse_frame(text)
    except BadFrame as bad:
        assert bad.reply.error.code in (-32700, -32600)


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12))
def test_any_json_value_parses_or_is_an_invalid_request(value: object) -> None:
    try:
        parse_frame(json.dumps(value))
    except BadFrame as bad:
        assert bad.reply.error.code == -32600


def test_object_schema_puts_the_object_at_the_root_and_validates_real_output() -> None:
    schema = object_schema(QueryResult)
    assert schema["type"] == "object" and "FragmentOutcome" in schema["$defs"]
    frag = FragmentOutcome(fragment_id="f", index=0, pool="p", strike_id="s", model="m", step="standard",
                           why="cheapest", cost_usd=0.1, latency_ms=2.0)
    answer = Answer(query_id="q", tenant="acme", text="hi", covenant="default", covenant_id="d", fusion="ordered",
                    fragments=[frag], cost_usd=0.1, latency_ms=3.0)
    jsonschema.validate(msgspec.to_builtins(QueryResult.of(answer)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"text": "no other fields"}, schema)
    reservation = Reservation(reservation_id="r", tenant="acme")
    jsonschema.validate(msgspec.to_builtins(reservation), object_schema(Reservation))


def test_the_tenant_is_hidden_from_the_reserve_schema_and_refused_as_an_argument() -> None:
    tools = McpTools(None)  # type: ignore[arg-type]  # building the table calls nothing on the gateway
    reserve = tools.specs["reserve"]
    assert "tenant" not in reserve.tool().input_schema["properties"]
    assert reserve.decode({"gpu_model": "H100"}, ACME).tenant == "acme"
    with pytest.raises(Forbidden, match="names tenant 'globex'") as err:  # the one rule of every ingress
        reserve.decode({"tenant": "globex"}, ACME)
    assert err.value.status == 403 and err.value.term == "tenant"


@pytest.mark.parametrize(("args", "named"), [
    ({"promt": "hi"}, "'promt'"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages[0].extra"),
    ({"prompt": "x", "messages": [{"role": "robot", "content": "x"}]}, "role"),
])
def test_bad_arguments_are_bad_requests_naming_the_argument(args: dict[str, object], named: str) -> None:
    tools = McpTools(None)  # type: ignore[arg-type]
    with pytest.raises(BadRequest) as bad:
        tools.specs["query"].decode(args, ACME)
    assert named in bad.value.message


def test_query_args_become_a_query_for_the_callers_tenant() -> None:
    query = msgspec.convert({"prompt": "hi", "max_tokens": 8}, QueryArgs).to_query("acme")
    assert (query.tenant, query.prompt, query.max_tokens) == ("acme", "hi", 8)


@given(st.dictionaries(st.sampled_from(["prompt", "messages", "covenant", "model", "overrides", "max_tokens",
                                        "temperature", "reservation_id", "tenant", "x"]),
                       st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
                       | st.lists(st.dictionaries(st.sampled_from(["role", "content"]), st.text(max_size=5)),
                                  max_size=2),
                       max_size=5))
def test_any_arguments_decode_or_are_a_bad_request(args: dict[str, object]) -> None:
    tools = McpTools(None)  # type: ignore[arg-type]
    for name in ("query", "quote", "reserve"):
        try:
            tools.specs[name].decode(args, ACME)
        except (BadRequest, Forbidden) as exc:  # Forbidden: a tenant argument that is not the caller's
            assert exc.message


@pytest.mark.parametrize("name", ["homeskillet.ingress.mcp", "homeskillet.ingress.mcp_tools",
                                  "homeskillet.ingress.mcp_websocket", "homeskillet.mcp_ws"])
def test_mcp_modules_declare_a_complete_all(name: str) -> None:
    mod = importlib.import_module(name)
    public = {n for n, v in vars(mod).items()
              if not n.startswith("_") and getattr(v, "__module__", None) == name and callable(v)}
    assert public <= set(mod.__all__) and all(hasattr(mod, n) for n in mod.__all__)
