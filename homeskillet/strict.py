"""Strict decoding of data files and overrides: an unknown key is an error naming where it was.

msgspec Structs on the wire ignore unknown fields (so peers can evolve); files written by people
must not, because a misspelt key silently falling back to a default is how budgets get blown.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["StrictError", "check_keys", "convert_strict", "load_toml"]

T = TypeVar("T")


class StrictError(ValueError):
    """A data file or override does not fit its schema; the message names the source and key."""


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct type inside ``tp`` (unwrapping Optional / unions), if any."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_of(arg)
        if found is not None:
            return found
    return None


def check_keys(data: Any, typ: type[msgspec.Struct], source: str, path: str = "") -> None:
    """Raise StrictError on the first key in ``data`` that ``typ`` does not declare."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(typ)
    known = set(typ.__struct_fields__)
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in known:
            raise StrictError(f"{source}: unknown key {where!r} (known here: {', '.join(sorted(known))})")
        sub = _struct_of(hints.get(key))
        if sub is not None:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    check_keys(item, sub, source, f"{where}[{i}]")
            else:
                check_keys(value, sub, source, where)


def convert_strict(data: dict[str, Any], typ: type[T], source: str) -> T:
    """Check keys, then convert with msgspec's type checks; errors name ``source`` and the key."""
    check_keys(data, typ, source)  # type: ignore[arg-type]
    try:
        return msgspec.convert(data, typ, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.qos.priority`": keep it, add the source.
        raise StrictError(f"{source}: {exc}") from exc


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = msgspec.toml.decode(p.read_bytes())
    except FileNotFoundError:
        raise StrictError(f"{p}: no such file") from None
    except msgspec.DecodeError as exc:
        raise StrictError(f"{p}: not valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise StrictError(f"{p}: expected a TOML table at the top level")
    return data
