"""Credentials (API keys, SSH keys) from the environment or files, never from logs.

A ``Secret`` is a ``str`` whose ``repr``/``str`` formatting is masked, so putting one in a log
line, an error message or an exception's args shows ``Secret('****')``, not the key. Use
``.reveal()`` at the one place the value goes on the wire (an ``Authorization`` header).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HomeskilletError

__all__ = ["Secret", "resolve_secret"]


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def resolve_secret(name: str, *, value: str | Secret | None = None, env: str | None = None,
                   file: str | Path | None = None, required: bool = True) -> Secret | None:
    """The first of ``value``, the file ``file``, the environment variable ``env``.

    ``name`` says what the secret is for in the error when none is found; the error names where
    we looked, never a value.
    """
    if isinstance(value, Secret):
        return value
    if value:
        return Secret(value)
    if file:
        path = Path(file).expanduser()
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise HomeskilletError(f"{name}: cannot read the secret file {path}: {exc.strerror}") from None
        if text:
            return Secret(text)
    if env and os.environ.get(env):
        return Secret(os.environ[env].strip())
    if required:
        where = " or ".join(w for w in (f"the file {file}" if file else "", f"${env}" if env else "") if w)
        raise HomeskilletError(f"{name}: no credential found; set {where or 'one in the pool options'}")
    return None
