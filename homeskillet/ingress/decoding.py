"""Decoding a request body, shared by every ingress: bytes in, a Struct out, or a 4xx naming the field.

msgspec says what is wrong and where (``… - at `$.messages[0].role```); a body nested too deeply
for the decoder is refused here too, never left to surface as a RecursionError (a 500).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from ..errors import BadRequest
from ..strict import error_path

__all__ = ["decode_json"]

T = TypeVar("T")
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode_json(typ: type[T], data: bytes, what: str = "the request body", *, whole: str = "body") -> T:
    """``data`` as ``typ``; a BadRequest whose ``term`` is the field at fault (``whole`` when it is
    the input as a whole: not JSON, nested too deeply)."""
    decoder = _decoders.get(typ)
    if decoder is None:
        decoder = _decoders[typ] = msgspec.json.Decoder(typ)
    try:
        value: T = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{what} does not fit the schema: {exc}", term=error_path(exc) or whole) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}", term=whole) from None
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply to decode", term=whole) from None
    return value
