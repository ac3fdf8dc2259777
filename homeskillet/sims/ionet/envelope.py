"""io.net's error envelope: the API is FastAPI, so errors look exactly like FastAPI's.

- validation: ``422 {"detail": [{"type", "loc", "msg", "input"[, "ctx"]}]}`` (pydantic v2 wording)
- everything else: ``{"detail": "<message>"}`` with the status code.

Bodies are decoded with msgspec Structs; ``decode_body`` rewrites msgspec's one-line errors into
pydantic's ``type``/``loc``/``msg`` so a connector sees what the real API would send.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["ApiError", "QueryReader", "decode_body", "json_response", "problem"]

T = TypeVar("T")


class ApiError(Exception):
    """Raised anywhere in a handler; rendered as ``{"detail": ...}`` with ``status``."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers

    def response(self) -> Response:
        return json_response({"detail": self.detail}, self.status, self.headers)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status, headers, media_type="application/json")


def problem(type_: str, loc: list[Any], msg: str, input_: Any = None, **ctx: Any) -> dict[str, Any]:
    """One pydantic v2 error item."""
    item: dict[str, Any] = {"type": type_, "loc": loc, "msg": msg, "input": input_}
    if ctx:
        item["ctx"] = ctx
    return item


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_TYPES = {
    "int": ("int_type", "Input should be a valid integer"),
    "str": ("string_type", "Input should be a valid string"),
    "array": ("list_type", "Input should be a valid list"),
    "object": ("dict_type", "Input should be a valid dictionary"),
    "bool": ("bool_type", "Input should be a valid boolean"),
    "float": ("float_type", "Input should be a valid number"),
}


def _lookup(data: Any, loc: list[Any]) -> Any:
    for step in loc:
        if isinstance(data, dict) and isinstance(step, str):
            data = data.get(step)
        elif isinstance(data, list) and isinstance(step, int) and step < len(data):
            data = data[step]
        else:
            return None
    return data


def _translate(exc: msgspec.ValidationError, data: Any) -> dict[str, Any]:
    text = str(exc)
    at = _AT.search(text)
    message = text[: at.start()] if at else text
    loc: list[Any] = []
    for key, index in _STEP.findall(at["path"] if at else ""):
        loc.append(key if key else (int(index) if index.isdigit() else index))
    value = _lookup(data, loc)
    if m := re.match(r"Object missing required field `(.+)`", message):
        return problem("missing", ["body", *loc, m[1]], "Field required", None)
    if m := re.match(r"Object contains unknown field `(.+)`", message):
        field = m[1]
        return problem("extra_forbidden", ["body", *loc, field], "Extra inputs are not permitted",
                       _lookup(data, [*loc, field]))
    if m := re.match(r"Expected `\w+` of length >= (\d+)", message):
        return problem("too_short", ["body", *loc], f"Value should have at least {m[1]} item(s)", value)
    if m := re.match(r"Expected `\w+` >= (\S+)", message):
        return problem("greater_than_equal", ["body", *loc],
                       f"Input should be greater than or equal to {m[1]}", value, ge=m[1])
    if m := re.match(r"Expected `\w+` <= (\S+)", message):
        return problem("less_than_equal", ["body", *loc],
                       f"Input should be less than or equal to {m[1]}", value, le=m[1])
    if m := re.match(r"Expected `(\w+)`", message):
        if not loc and m[1] == "object":
            return problem("model_attributes_type", ["body"],
                           "Input should be a valid dictionary or object to extract fields from", value)
        type_, msg = _TYPES.get(m[1], ("value_error", message))
        return problem(type_, ["body", *loc], msg, value)
    return problem("value_error", ["body", *loc], f"Value error, {message}", value)


async def decode_body(request: Request, type_: type[T]) -> T:
    """Decode a JSON body into ``type_`` or raise the 422 FastAPI would send."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(422, [problem("missing", ["body"], "Field required", None)])
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        byte = re.search(r"byte (\d+)", str(exc))
        pos = int(byte[1]) if byte else 0
        raise ApiError(422, [problem("json_invalid", ["body", pos], "JSON decode error", {},
                                     error=str(exc))]) from None
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise ApiError(422, [_translate(exc, data)]) from None


class QueryReader:
    """Reads query parameters the way FastAPI validates them, collecting every error at once."""

    def __init__(self, request: Request) -> None:
        self._q = request.query_params
        self.errors: list[dict[str, Any]] = []

    def text(self, name: str, *, required: bool = True) -> str | None:
        raw = self._q.get(name)
        if raw is None and required:
            self.errors.append(problem("missing", ["query", name], "Field required", None))
        return raw

    def integer(self, name: str, *, ge: int | None = None, required: bool = True) -> int | None:
        raw = self.text(name, required=required)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            self.errors.append(problem("int_parsing", ["query", name],
                                       "Input should be a valid integer, unable to parse string as an "
                                       "integer", raw))
            return None
        if ge is not None and value < ge:
            self.errors.append(problem("greater_than_equal", ["query", name],
                                       f"Input should be greater than or equal to {ge}", raw, ge=ge))
            return None
        return value

    def json_list(self, name: str) -> list[Any] | None:
        """``location_ids=[1,2]``: the API takes a JSON array inside one query parameter."""
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            value = None
        if not isinstance(value, list) or not value:
            self.errors.append(problem("value_error", ["query", name],
                                       "Value error, expected a non-empty JSON array such as [1,2]", raw))
            return None
        return value

    def check(self) -> None:
        if self.errors:
            raise ApiError(422, self.errors)
