"""Fuzz the decode + validation every ingress shares (the bulk of the inputs): each input is
accepted, or refused with a 4xx naming the field; never anything else. ``make fuzz`` runs 10,000
inputs per decoder; the suite runs a small, fixed share."""

from __future__ import annotations

from typing import Any

from fuzzkit import (
    COVENANT_FILES,
    PURE_INPUTS,
    SCENARIO_FILES,
    FileDriver,
    Pure,
    World,
    batch,
    chat_body,
    drive,
    fuzz_settings,
    mutated_toml,
    query_body,
    reserve_body,
    tool_call,
)
from hypothesis import given
from hypothesis import strategies as st

from homeskillet.ingress.mcp_tools import McpTools


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(query_body))
def test_nats_query(pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        drive("NATS hs.query", pure.query, data)


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(query_body))
def test_nats_quote(pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        drive("NATS hs.quote", pure.query, data)


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(reserve_body))
def test_nats_reserve(pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        drive("NATS hs.reserve", pure.reserve, data)


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(chat_body))
def test_http_v1(pure: Pure, inputs: list[bytes]) -> None:
    for data in inputs:
        drive("HTTP /v1", pure.chat, data)


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(st.tuples(st.booleans(), st.one_of(query_body, reserve_body))))
def test_http_api_v1(pure: Pure, inputs: list[tuple[bool, bytes]]) -> None:
    for reserve, data in inputs:
        if reserve:
            drive("HTTP /api/v1", pure.reserve, data)
        else:
            drive("HTTP /api/v1", pure.query, data, "body")


_tools: list[McpTools] = []


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(tool_call))
def test_mcp_tool_arguments(pure: Pure, world: World, inputs: list[tuple[str, Any]]) -> None:
    if not _tools:
        _tools.append(McpTools(world.rt.gateway))
    for name, args in inputs:
        drive("MCP tool arguments", pure.tool, _tools[0], name, args)


_covenants = FileDriver(".toml")
_scenarios = FileDriver(".toml")


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(mutated_toml(COVENANT_FILES)))
def test_covenant_files(pure: Pure, inputs: list[str]) -> None:
    for text in inputs:
        drive("covenant files", pure.covenant_file, _covenants, text)


@fuzz_settings(PURE_INPUTS)
@given(inputs=batch(mutated_toml(SCENARIO_FILES)))
def test_scenario_files(pure: Pure, inputs: list[str]) -> None:
    for text in inputs:
        drive("scenario files", pure.scenario_file, _scenarios, text)
