"""Just enough GraphQL to answer RunPod's documented operations.

Not a GraphQL engine: no schema, no fragments, no directives. It tokenizes a document, picks the
operation (by ``operationName`` when there are several), reads each field's alias, arguments and
selection set, and substitutes ``$variables`` (falling back to the defaults in the variable
definitions) so ``input`` may be written inline as an object literal or passed as a variable. The
executor calls one resolver per top-level field and keeps only the requested subfields; a value
that is a callable takes the field's arguments (``lowestPrice(input: ...)``). A subfield the
simulator does not model answers ``null`` rather than failing validation, because our types are a
subset of RunPod's and a real client may ask for more.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Field", "GraphQLError", "GraphQLSyntaxError", "Operation", "Resolver", "execute", "parse"]

Resolver = Callable[[dict[str, Any]], Any]
_MAX_DEPTH = 32
_MAX_LENGTH = 100_000
_TOKEN = re.compile(r'''
    (?P<skip>[\s,\ufeff]+|\#[^\n\r]*)
  | (?P<block>"""(?:[^"\\]|\\.|"(?!""))*""")
  | (?P<string>"(?:[^"\\\n\r]|\\.)*")
  | (?P<number>-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<name>[_A-Za-z][_0-9A-Za-z]*)
  | (?P<punct>\.\.\.|[!$&()\[\]{}:=@|])
''', re.VERBOSE)


class GraphQLError(Exception):
    """A resolver's refusal: HTTP 200 with ``{"errors": [{"message", "path"}], "data": null}``."""

    def __init__(self, message: str, path: list[str | int] | None = None) -> None:
        super().__init__(message)
        self.message, self.path = message, path or []


class GraphQLSyntaxError(GraphQLError):
    """The document cannot be read or asks for an unknown root field: HTTP 400, like Apollo."""


@dataclass(frozen=True)
class Field:
    name: str
    alias: str | None
    args: dict[str, Any]
    selections: tuple[Field, ...]

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass(frozen=True)
class Operation:
    kind: str  # "query" | "mutation"
    name: str | None
    fields: tuple[Field, ...]


def _tokens(source: str) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise GraphQLSyntaxError(f"Syntax Error: Unexpected character {source[pos]!r} at offset {pos}.")
        pos = m.end()
        if m.lastgroup != "skip":
            yield m.lastgroup or "", m.group()


class _Parser:
    def __init__(self, source: str, variables: dict[str, Any]) -> None:
        self.tokens = list(_tokens(source))
        self.pos, self.depth = 0, 0
        self.variables = variables
        self.defaults: dict[str, Any] = {}

    def peek(self) -> str | None:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, kind: str | None = None, value: str | None = None) -> str:
        if self.pos >= len(self.tokens):
            raise GraphQLSyntaxError(f"Syntax Error: Expected {value or kind}, found <EOF>.")
        tkind, tvalue = self.tokens[self.pos]
        if (kind and tkind != kind) or (value and tvalue != value):
            raise GraphQLSyntaxError(f"Syntax Error: Expected {value or kind}, found {tvalue!r}.")
        self.pos += 1
        return tvalue

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise GraphQLSyntaxError("Syntax Error: document nests too deeply.")

    def operations(self) -> list[Operation]:
        ops = []
        while self.peek() is not None:
            ops.append(self.operation())
        if not ops:
            raise GraphQLSyntaxError("Syntax Error: Unexpected <EOF>.")
        return ops

    def operation(self) -> Operation:
        kind, name = "query", None
        if self.peek() != "{":
            kind = self.take("name")
            if kind not in ("query", "mutation"):
                raise GraphQLSyntaxError(f"Syntax Error: Unexpected {kind!r}; fragments and subscriptions "
                                         "are not supported by the simulator.")
            if self.peek() not in ("(", "{"):
                name = self.take("name")
            self.defaults = self.variable_definitions() if self.peek() == "(" else {}
        return Operation(kind, name, self.selection_set())

    def variable_definitions(self) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        self.take(value="(")
        while self.peek() != ")":
            self.take(value="$")
            name = self.take("name")
            self.take(value=":")
            self.type_ref()
            if self.peek() == "=":
                self.take(value="=")
                defaults[name] = self.value()
        self.take(value=")")
        return defaults

    def type_ref(self) -> None:
        if self.peek() == "[":
            self.take(value="[")
            self.type_ref()
            self.take(value="]")
        else:
            self.take("name")
        if self.peek() == "!":
            self.take(value="!")

    def selection_set(self) -> tuple[Field, ...]:
        self.nest()
        self.take(value="{")
        fields = []
        while self.peek() != "}":
            if self.peek() in ("...", "@"):
                raise GraphQLSyntaxError("Syntax Error: fragments and directives are not supported here.")
            fields.append(self.field())
        self.take(value="}")
        self.depth -= 1
        return tuple(fields)

    def field(self) -> Field:
        alias, name = None, self.take("name")
        if self.peek() == ":":
            self.take(value=":")
            alias, name = name, self.take("name")
        args: dict[str, Any] = {}
        if self.peek() == "(":
            self.take(value="(")
            while self.peek() != ")":
                arg = self.take("name")
                self.take(value=":")
                args[arg] = self.value()
            self.take(value=")")
        selections = self.selection_set() if self.peek() == "{" else ()
        return Field(name, alias, args, selections)

    def value(self) -> Any:
        if self.pos >= len(self.tokens):
            raise GraphQLSyntaxError("Syntax Error: Expected a value, found <EOF>.")
        kind, token = self.tokens[self.pos]
        if token == "$":
            self.take(value="$")
            name = self.take("name")
            return self.variables.get(name, self.defaults.get(name))
        if token in ("[", "{"):
            self.nest()
            self.take(value=token)
            close = "]" if token == "[" else "}"
            items: list[Any] = []
            obj: dict[str, Any] = {}
            while self.peek() != close:
                if token == "[":
                    items.append(self.value())
                else:
                    key = self.take("name")
                    self.take(value=":")
                    obj[key] = self.value()
            self.take(value=close)
            self.depth -= 1
            return items if token == "[" else obj
        self.pos += 1
        if kind == "string":
            try:
                return json.loads(token)
            except ValueError:
                raise GraphQLSyntaxError(f"Syntax Error: Invalid string {token!r}.") from None
        if kind == "block":
            return token[3:-3].replace('\\"""', '"""').strip()
        if kind == "number":
            return float(token) if any(c in token for c in ".eE") else int(token)
        if kind == "name":
            return {"true": True, "false": False, "null": None}.get(token, token)  # else an enum value
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {token!r}.")


def parse(
    source: str, variables: dict[str, Any] | None = None, operation_name: str | None = None
) -> Operation:
    """Read a document and pick the operation to run, with variables already substituted."""
    if len(source) > _MAX_LENGTH:
        raise GraphQLSyntaxError("Syntax Error: document too large.")
    ops = _Parser(source, variables or {}).operations()
    if operation_name is not None:
        for op in ops:
            if op.name == operation_name:
                return op
        raise GraphQLSyntaxError(f'Unknown operation named "{operation_name}".')
    if len(ops) > 1:
        raise GraphQLSyntaxError("Must provide operation name if query contains multiple operations.")
    return ops[0]


def _project(value: Any, fields: tuple[Field, ...], path: list[str | int]) -> Any:
    if value is None or not fields:
        return value
    if isinstance(value, list):
        return [_project(v, fields, [*path, i]) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for f in fields:
        sub = value.get(f.name)
        if callable(sub):
            try:
                sub = sub(f.args)
            except GraphQLError as exc:
                exc.path = exc.path or [*path, f.key]
                raise
        out[f.key] = _project(sub, f.selections, [*path, f.key])
    return out


def execute(op: Operation, roots: dict[str, dict[str, Resolver]]) -> tuple[dict[str, Any] | None, list[Any]]:
    """Run each top-level field; a field whose resolver refuses becomes ``null`` plus an error."""
    resolvers = roots.get(op.kind, {})
    type_name = "Query" if op.kind == "query" else "Mutation"
    for f in op.fields:
        if f.name not in resolvers and f.name != "__typename":
            raise GraphQLSyntaxError(f'Cannot query field "{f.name}" on type "{type_name}".')
    data: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for f in op.fields:
        if f.name == "__typename":
            data[f.key] = type_name
            continue
        try:
            data[f.key] = _project(resolvers[f.name](f.args), f.selections, [f.key])
        except GraphQLError as exc:
            data[f.key] = None
            errors.append({"message": exc.message, "path": exc.path or [f.key]})
    failed = {e["path"][0] for e in errors}
    return (None if errors and failed >= set(data) else data), errors
