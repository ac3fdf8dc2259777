"""Google's error model: ``google.rpc.Status`` over HTTP, and inside failed Operations.

HTTP errors are ``{"error": {"code": <http>, "message", "status": "<CANONICAL>", "details": [...]}}``;
an Operation's ``error`` is the same Status with the *gRPC* code (8 = RESOURCE_EXHAUSTED) and no
``status`` string. Bad JSON bodies are rejected the way Google's JSON transcoder words it.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response

__all__ = ["CODES", "GoogleError", "decode_body", "google_json", "invalid", "not_found", "query"]

T = TypeVar("T")

# canonical status -> (gRPC code, HTTP status)
CODES: dict[str, tuple[int, int]] = {
    "CANCELLED": (1, 499),
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "UNAUTHENTICATED": (16, 401),
}


def google_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(body), status, headers, media_type="application/json")


class GoogleError(Exception):
    def __init__(self, status: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.details, self.headers = status, message, details or [], headers

    @property
    def http_status(self) -> int:
        return CODES[self.status][1]

    def rpc_status(self) -> dict[str, Any]:
        """The ``google.rpc.Status`` carried by a failed Operation."""
        return {"code": CODES[self.status][0], "message": self.message, "details": self.details}

    def response(self) -> Response:
        body = {"code": self.http_status, "message": self.message, "status": self.status,
                "details": self.details}
        return google_json({"error": body}, self.http_status, self.headers)


def not_found(name: str) -> GoogleError:
    return GoogleError("NOT_FOUND", f"Resource '{name}' was not found", [
        {"@type": "type.googleapis.com/google.rpc.ResourceInfo", "resourceName": name}])


def invalid(field: str, description: str) -> GoogleError:
    return GoogleError("INVALID_ARGUMENT", description, [
        {"@type": "type.googleapis.com/google.rpc.BadRequest",
         "fieldViolations": [{"field": field, "description": description}]}])


_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_PROTO = {"str": "TYPE_STRING", "bool": "TYPE_BOOL", "int": "TYPE_INT32", "float": "TYPE_DOUBLE",
          "object": "TYPE_MESSAGE", "array": "TYPE_MESSAGE"}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _field_path(root: str, path: str) -> str:
    out = [root]
    for key, index in _STEP.findall(path):
        if key:
            out.append(_snake(key))
        else:
            out[-1] += f"[{index}]"
    return ".".join(out)


def _lookup(data: Any, path: str) -> Any:
    for key, index in _STEP.findall(path):
        if isinstance(data, dict) and key:
            data = data.get(key)
        elif isinstance(data, list) and index.isdigit() and int(index) < len(data):
            data = data[int(index)]
        else:
            return None
    return data


def _translate(exc: msgspec.ValidationError, data: Any, root: str) -> GoogleError:
    text = str(exc)
    at = _AT.search(text)
    message, path = (text[: at.start()], at["path"]) if at else (text, "")
    where = _field_path(root, path)
    if m := re.match(r"Object contains unknown field `(.+)`", message):
        return invalid(where, f"Invalid JSON payload received. Unknown name \"{m[1]}\" at '{where}': "
                              "Cannot find field.")
    if m := re.match(r"Object missing required field `(.+)`", message):
        field = f"{where}.{_snake(m[1])}"
        return invalid(field, f"Field '{field}' is required")
    if m := re.match(r"Expected `(\w+)`, got `(\w+)`", message):
        shown = msgspec.json.encode(_lookup(data, path)).decode()
        if m[2] in ("object", "array") or not path:
            return invalid(where, f"Invalid JSON payload received. Expected {m[1]} at '{where}', got {m[2]}.")
        return invalid(where, f"Invalid value at '{where}' ({_PROTO.get(m[1], 'TYPE_MESSAGE')}), {shown}")
    return invalid(where, f"Invalid value at '{where}': {message}")


def _json_names(data: Any, info: msgspec.inspect.Type) -> Any:
    """Rename proto field names (``accelerator_type``) to JSON names (``acceleratorType``).

    Google's transcoder accepts both spellings; its own curl examples use snake_case. Only message
    fields are renamed, never the keys of maps such as ``labels``.
    """
    if isinstance(info, msgspec.inspect.UnionType):
        for option in info.types:
            if isinstance(option, msgspec.inspect.StructType | msgspec.inspect.ListType):
                return _json_names(data, option)
        return data
    if isinstance(info, msgspec.inspect.StructType) and isinstance(data, dict):
        fields = {f.name: f for f in info.fields} | {f.encode_name: f for f in info.fields}
        out: dict[str, Any] = {}
        for key, value in data.items():
            if (f := fields.get(key)) is None:
                out[key] = value  # unknown: left for the decoder to reject by its own name
            else:
                out[f.encode_name] = _json_names(value, f.type)
        return out
    if isinstance(info, msgspec.inspect.ListType) and isinstance(data, list):
        return [_json_names(item, info.item_type) for item in data]
    return data


def decode_body(raw: bytes, type_: type[T], root: str) -> T:
    """Decode a request body into ``type_``; ``root`` names it in errors (``node``, ``queued_resource``)."""
    if not raw.strip():
        raw = b"{}"  # an absent body is an empty message to Google's transcoder
    try:
        data = _json_names(msgspec.json.decode(raw), msgspec.inspect.type_info(type_))
    except msgspec.DecodeError:
        raise invalid(root, "Invalid JSON payload received. Unexpected token.") from None
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise _translate(exc, data, root) from None


def query(request_params: Any, name: str) -> str | None:
    """A query parameter by JSON name or proto name (``nodeId`` or ``node_id``)."""
    value: str | None = request_params.get(name)
    return value if value is not None else request_params.get(_snake(name))
