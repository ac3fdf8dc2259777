"""The MCP tools: argument and result Structs, their JSON schemas, and one call into the gateway each.

Arguments decode strictly (an unknown or mistyped argument is a tool error naming it); results are
Structs whose msgspec schema is the tool's ``outputSchema``, returned as ``structuredContent`` and,
as the spec suggests, as JSON text. The tenant is not an argument: it comes from the caller's
credential (``Principal``); a ``tenant`` argument naming another tenant is refused with 403 (the
caller's own is ignored), as on every ingress, so one tenant cannot act as another. ``query``
given a ``Progress`` (the caller sent a progress token) reports the answer's text as it is produced.

Errors: a ``HomeskilletError`` (bad arguments, no pool, another tenant's reservation…) comes back
as a tool result with ``isError`` and an ``ErrorReply`` as structured content, so a model can read
it and correct itself; an unknown tool name is a JSON-RPC error (-32602), as the spec says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, Tool, ToolAnnotations

from ..auth import Principal, Scope
from ..clock import now_ms
from ..errors import BadRequest, HomeskilletError
from ..gateway import Gateway, error_reply
from ..streaming import streamed
from ..strict import StrictError, convert_strict
from ..telemetry import get_logger
from ..wire import (
    AllocationMetrics,
    Answer,
    FragmentOutcome,
    Message,
    Offer,
    Query,
    QuoteReply,
    Reservation,
    ReserveRequest,
)

__all__ = ["McpTools", "NoArgs", "PoolRow", "PoolTable", "Progress", "QueryArgs", "QueryResult", "QuoteArgs",
           "ReservationRef", "ToolSpec", "object_schema", "tool_error"]

log = get_logger("homeskillet.ingress.mcp")


# --- arguments -----------------------------------------------------------------------------------


class QuoteArgs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A query: ``prompt`` or ``messages``; a covenant by name (or picked by ``model``), plus overrides."""

    prompt: str | None = None
    messages: list[Message] | None = None
    covenant: str | None = None
    model: str | None = None
    overrides: dict[str, Any] | None = None  # e.g. {"qos": {"latency_target_ms": 500}}
    max_tokens: int | None = None
    temperature: float = 0.0

    def to_query(self, tenant: str) -> Query:
        return Query(tenant=tenant, prompt=self.prompt, messages=self.messages, covenant=self.covenant,
                     model=self.model, overrides=self.overrides, max_tokens=self.max_tokens,
                     temperature=self.temperature)


class QueryArgs(QuoteArgs, kw_only=True, forbid_unknown_fields=True):
    reservation_id: str | None = None  # run on this reservation of yours instead of negotiating


class ReservationRef(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    reservation_id: str


class NoArgs(msgspec.Struct, forbid_unknown_fields=True):
    pass


# --- results -------------------------------------------------------------------------------------


class QueryResult(msgspec.Struct, kw_only=True):
    query_id: str
    text: str
    covenant: str
    covenant_id: str
    kept: bool  # every fragment's covenant terms were kept
    cost_usd: float
    latency_ms: float
    pools: list[str]  # the pools that served it, in fragment order, each once
    fragments: list[FragmentOutcome]  # the verdict per fragment: pool, step, why, kept, broken terms
    strategy: str = ""  # how it was served; "(buffered)" marks what had to wait for whole answers
    ttft_ms: float | None = None  # streamed (a progress token was given): time to the first text

    @classmethod
    def of(cls, a: Answer) -> QueryResult:
        return cls(query_id=a.query_id, text=a.text, covenant=a.covenant, covenant_id=a.covenant_id,
                   kept=all(f.kept for f in a.fragments), cost_usd=a.cost_usd, latency_ms=a.latency_ms,
                   pools=list(dict.fromkeys(f.pool for f in a.fragments)), fragments=a.fragments,
                   strategy=a.strategy, ttft_ms=a.ttft_ms)


class PoolRow(msgspec.Struct, kw_only=True):
    pool: str
    quote_seq: int
    quote_age_ms: int
    expires_in_ms: int
    offer: Offer


class PoolTable(msgspec.Struct, kw_only=True):
    pools: list[PoolRow]  # pools with a fresh standing quote, by name


# --- schemas -------------------------------------------------------------------------------------


def object_schema(tp: type[msgspec.Struct], *, hide: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The Struct's JSON schema with the object at the root (MCP wants ``type: object`` there, where
    msgspec puts a ``$ref``); ``hide`` drops fields the server fills in."""
    schema = msgspec.json.schema(tp)
    defs: dict[str, Any] = schema.pop("$defs", {})
    root = dict(defs.pop(schema["$ref"].rsplit("/", 1)[-1])) if "$ref" in schema else schema
    if hide:
        root["properties"] = {k: v for k, v in root["properties"].items() if k not in hide}
        root["required"] = [k for k in root.get("required", []) if k not in hide]
    return {**root, "$defs": defs} if defs else root


# --- the table -----------------------------------------------------------------------------------

Run = Callable[[Principal, Any], Awaitable[msgspec.Struct]]
Progress = Callable[[float, float | None, str | None], Awaitable[None]]  # (progress, total, message)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[msgspec.Struct]
    result: type[msgspec.Struct]
    run: Run
    kind: Literal["read", "write", "destructive"] = "read"
    tenant_arg: bool = False  # the args Struct has a ``tenant`` field the server sets
    scope: Scope = "hs:query"  # what the caller's token must grant

    def tool(self) -> Tool:
        hide = frozenset({"tenant"}) if self.tenant_arg else frozenset()
        return Tool(name=self.name, description=self.description,
                    input_schema=object_schema(self.args, hide=hide), output_schema=object_schema(self.result),
                    annotations=ToolAnnotations(read_only_hint=self.kind == "read",
                                                destructive_hint=self.kind == "destructive",
                                                idempotent_hint=self.kind != "write", open_world_hint=True))

    def decode(self, arguments: dict[str, Any], principal: Principal) -> Any:
        if "tenant" in arguments:  # the one identity rule (auth.py): only the caller's own tenant may be named
            named = arguments["tenant"]
            if not isinstance(named, str):
                raise BadRequest("'tenant' must be a string, and only your own tenant", term="tenant")
            principal.check_named((("tenant", named),))
            arguments = {k: v for k, v in arguments.items() if k != "tenant"}
        if self.tenant_arg:
            arguments = {**arguments, "tenant": principal.tenant}
        try:
            return convert_strict(arguments, self.args, f"{self.name} arguments")
        except StrictError as exc:
            raise BadRequest(str(exc), term=exc.key or "arguments") from None


def tool_error(exc: HomeskilletError) -> CallToolResult:
    reply = error_reply(exc)
    return CallToolResult(content=[TextContent(type="text", text=f"{exc.code} ({exc.status}): {exc.message}")],
                          structured_content=msgspec.to_builtins(reply), is_error=True)


class McpTools:
    """Every tool, bound to one gateway. ``call`` is what the MCP server's ``tools/call`` runs."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        specs = [
            ToolSpec("query", "Answer a prompt or chat under a covenant: negotiated per fragment with the pools, "
                     "struck, fused. Returns the answer text, the covenant verdict per fragment (pool, fallback "
                     "step, terms kept or broken), cost in USD and the pools used. With reservation_id, runs on "
                     "that reservation of yours.", QueryArgs, QueryResult, self._query, "write"),
            ToolSpec("quote", "Negotiate a query without executing it: per fragment, the winning bid (pool, price, "
                     "predicted latency, why it won), the ranked alternatives and the pools that refused with the "
                     "covenant term they cannot meet. Nothing is held or charged.", QuoteArgs, QuoteReply,
                     self._quote),
            ToolSpec("reserve", "Reserve compute ahead of use (GPU/TPU by model, count, duration, cost ceiling, "
                     "fallback providers). Returns the reservation with its endpoints and the failover steps "
                     "passed over.", ReserveRequest, Reservation, self._reserve, "write", tenant_arg=True,
                     scope="hs:reserve"),
            ToolSpec("reservation", "Look up one of your reservations by id.", ReservationRef, Reservation,
                     self._reservation, scope="hs:reserve"),
            ToolSpec("release", "Release one of your reservations; returns it with its final bill when the "
                     "provider states one.", ReservationRef, Reservation, self._release, "destructive",
                     scope="hs:reserve"),
            ToolSpec("allocation_metrics", "Live metrics of one of your reservations' allocation: utilisation, "
                     "memory, inference count, latency, uptime, accrued cost.", ReservationRef, AllocationMetrics,
                     self._metrics, scope="hs:reserve"),
            ToolSpec("pools", "The live pool table: every pool with a fresh standing quote, its offer (capacity, "
                     "price, predicted latency, reliability) and the quote's age.", NoArgs, PoolTable, self._pools),
        ]
        self.specs = {s.name: s for s in specs}
        self.tools = [s.tool() for s in specs]

    async def call(self, principal: Principal, name: str, arguments: dict[str, Any] | None,
                   progress: Progress | None = None) -> CallToolResult:
        """Run a tool; ``progress`` (the caller asked for it) streams ``query``'s text."""
        spec = self.specs.get(name)
        if spec is None:
            raise MCPError(INVALID_PARAMS, f"unknown tool {name!r}; the tools are: {', '.join(self.specs)}")
        try:
            who, args = principal.require(spec.scope), spec.decode(arguments or {}, principal)
            streams = progress is not None and name == "query"
            result = await (self._query(who, args, progress) if streams else spec.run(who, args))
        except HomeskilletError as exc:
            log.info("mcp_tool_failed", tool=name, tenant=principal.tenant, code=exc.code, error=exc.message)
            return tool_error(exc)
        except Exception as exc:  # a bug must still answer the caller, and must not end the session
            log.exception("mcp_tool_crashed", tool=name, tenant=principal.tenant)
            return tool_error(HomeskilletError(f"internal error in tool {name!r}: {type(exc).__name__}"))
        structured = msgspec.to_builtins(result)
        return CallToolResult(content=[TextContent(type="text", text=msgspec.json.encode(structured).decode())],
                              structured_content=structured)

    # --- one gateway call each ---------------------------------------------------------------------

    async def _query(self, p: Principal, args: QueryArgs, progress: Progress | None = None) -> QueryResult:
        query, rid = args.to_query(p.tenant), args.reservation_id
        if progress is None:
            if rid is not None:
                return QueryResult.of(await self.gateway.infer_on(rid, p.tenant, query))
            return QueryResult.of(await self.gateway.ask(query, p))
        sent = 0
        items = streamed(lambda sink: self.gateway.infer_on(rid, p.tenant, query, stream=sink)
                         if rid is not None else self.gateway.ask(query, p, stream=sink))
        async with contextlib.aclosing(items):  # type: ignore[type-var]
            async for item in items:
                if isinstance(item, Answer):
                    return QueryResult.of(item)
                sent += len(item)
                await progress(float(sent), None, item)
        raise HomeskilletError("the streamed query ended without an answer")

    async def _quote(self, p: Principal, args: QuoteArgs) -> QuoteReply:
        return await self.gateway.quote(args.to_query(p.tenant), p)

    async def _reserve(self, p: Principal, req: ReserveRequest) -> Reservation:
        return await self.gateway.reserve(req)

    async def _reservation(self, p: Principal, ref: ReservationRef) -> Reservation:
        return await self.gateway.reservation(ref.reservation_id, p.tenant)

    async def _release(self, p: Principal, ref: ReservationRef) -> Reservation:
        return await self.gateway.release(ref.reservation_id, p.tenant)

    async def _metrics(self, p: Principal, ref: ReservationRef) -> AllocationMetrics:
        return await self.gateway.reservation_metrics(ref.reservation_id, p.tenant)

    async def _pools(self, p: Principal, _: NoArgs) -> PoolTable:
        t = now_ms()
        view = self.gateway.orchestrator.negotiator.view  # the broker's immutable snapshot: no thread hop
        rows = [PoolRow(pool=q.offer.pool, quote_seq=q.seq, quote_age_ms=max(0, t - q.issued_at_ms),
                        expires_in_ms=q.expires_at_ms - t, offer=q.offer)
                for q in view.quotes if q.expires_at_ms >= t]
        return PoolTable(pools=sorted(rows, key=lambda r: r.pool))
