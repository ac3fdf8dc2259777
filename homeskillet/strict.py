"""Strict decoding of data files and overrides: an unknown key is an error naming where it was.

msgspec Structs on the wire ignore unknown fields (so peers can evolve); files written by people
must not, because a misspelt key silently falling back to a default is how budgets get blown.

Before any conversion the values are walked once (``check_values``): nesting deeper than
``MAX_DEPTH``, a number that is not finite, or an integer outside 64 bits is an error naming the
key, so a hostile value is refused here rather than overflowing (or recursing) somewhere later.
"""

from __future__ import annotations

import functools
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import msgspec

__all__ = ["MAX_DEPTH", "StrictError", "check_keys", "check_values", "convert_strict", "error_path", "load_toml"]

T = TypeVar("T")


MAX_DEPTH = 12  # tables/arrays within each other; the deepest schema here needs 5
_INT_LIMIT = 1 << 63  # every integer term is a 64-bit one on the wire


class StrictError(ValueError):
    """A data file or override does not fit its schema; the message names the source and key
    (``key``: the dotted path, e.g. ``qos.hard_deadline_ms``; "" when the whole input is wrong)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def error_path(exc: msgspec.ValidationError) -> str:
    """The dotted path msgspec names: ``Expected `int`, got `str` - at `$.qos.priority``` →
    ``qos.priority``; ``Object missing required field `model` - at `$.resources``` →
    ``resources.model`` ("" when it names none)."""
    text = str(exc)
    head, sep, where = text.rpartition(" - at `$")
    path = where.rstrip("`").lstrip(".").replace("[...]", "") if sep else ""
    _, sep, missing = (head if sep else text).partition("missing required field `")
    if sep:
        path = f"{path}.{missing.rstrip('`')}" if path else missing.rstrip("`")
    return path


def check_values(data: Any, source: str, *, max_depth: int = MAX_DEPTH, path: str = "") -> None:
    """Raise StrictError naming the key of the first value nested deeper than ``max_depth``, of a
    float that is not finite, or of an integer outside 64 bits. Iterative: depth cannot recurse."""
    stack: list[tuple[Any, str, int]] = [(data, path, 0)]
    while stack:
        value, where, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= max_depth:
                raise StrictError(f"{source}: {where or 'the input'} is nested more than {max_depth} deep", where)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                sub = (f"{where}[{k}]" if isinstance(value, list) else f"{where}.{k}" if where else str(k))
                stack.append((v, sub, depth + 1))
        elif isinstance(value, float) and not math.isfinite(value):
            raise StrictError(f"{source}: {where}: {value} is not a finite number", where)
        elif isinstance(value, int) and not isinstance(value, bool) and not -_INT_LIMIT <= value < _INT_LIMIT:
            raise StrictError(f"{source}: {where}: a {len(str(abs(value)))}-digit integer is out of range "
                              "(64-bit integers only)", where)


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    """The Struct type inside ``tp`` (unwrapping Optional / unions), if any."""
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return tp
    for arg in typing.get_args(tp):
        found = _struct_of(arg)
        if found is not None:
            return found
    return None


@functools.cache
def _fields(typ: type[msgspec.Struct]) -> tuple[dict[str, Any], frozenset[str]]:
    return typing.get_type_hints(typ), frozenset(typ.__struct_fields__)


def check_keys(data: Any, typ: type[msgspec.Struct], source: str, path: str = "") -> None:
    """Raise StrictError on the first key in ``data`` that ``typ`` does not declare."""
    if not isinstance(data, dict):
        return
    hints, known = _fields(typ)
    for key, value in data.items():
        where = f"{path}.{key}" if path else key
        if key not in known:
            raise StrictError(f"{source}: unknown key {where!r} (known here: {', '.join(sorted(known))})", where)
        sub = _struct_of(hints.get(key))
        if sub is not None:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    check_keys(item, sub, source, f"{where}[{i}]")
            else:
                check_keys(value, sub, source, where)


def convert_strict(data: dict[str, Any], typ: type[T], source: str) -> T:
    """Check values and keys, then convert with msgspec's type checks; errors name ``source`` and the key."""
    check_values(data, source)
    check_keys(data, typ, source)  # type: ignore[arg-type]
    try:
        return msgspec.convert(data, typ, strict=True)
    except msgspec.ValidationError as exc:
        # msgspec says "Expected `int`, got `str` - at `$.qos.priority`": keep it, add the source.
        raise StrictError(f"{source}: {exc}", error_path(exc)) from None


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = msgspec.toml.decode(p.read_bytes())
    except FileNotFoundError:
        raise StrictError(f"{p}: no such file") from None
    except msgspec.DecodeError as exc:  # the file as a whole is at fault: its path is the "key"
        raise StrictError(f"{p}: not valid TOML: {exc}", str(p)) from None
    except RecursionError:
        raise StrictError(f"{p}: not valid TOML: nested too deeply", str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StrictError(f"{p}: cannot read it: {exc}", str(p)) from None
    if not isinstance(data, dict):
        raise StrictError(f"{p}: expected a TOML table at the top level", str(p))
    return data
