"""What every HTTP route shares: who is calling, reading a bounded body into a Struct, JSON out.

Routes stay thin: ``principal`` → ``read_body`` → one gateway call → ``json``. Errors are raised as
``HomeskilletError``; each API's exception handler (``openai_api`` / ``admin_api``) renders them
in its own envelope.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ..auth import Authenticator, Principal, Scope
from ..errors import BadRequest, PayloadTooLarge
from ..gateway import Gateway
from .decoding import decode_json

__all__ = ["HttpContext", "json", "principal", "read_body"]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


class HttpContext:
    """Put on ``app.state.hs``: the gateway, the authenticator and the body limit."""

    def __init__(self, gateway: Gateway, auth: Authenticator, *, max_body_bytes: int) -> None:
        self.gateway, self.auth, self.max_body_bytes = gateway, auth, max_body_bytes


def context(request: Request) -> HttpContext:
    ctx: HttpContext = request.app.state.hs
    return ctx


def principal(request: Request, body_tenant: str | None = None, *, scope: Scope) -> Principal:
    """The caller, allowed ``scope``, by the one identity rule (``Authenticator.identify``): the bearer
    token's tenant when auth is on; an ``X-Tenant`` header, ``?tenant=`` or body tenant naming
    another is 403. With auth off the first of those named is the tenant, else the default one."""
    named = (("X-Tenant", request.headers.get("x-tenant")), ("?tenant", request.query_params.get("tenant")),
             ("tenant", body_tenant))
    return context(request).auth.identify(request.headers.get("authorization"), named, scope=scope)


async def read_body(request: Request, typ: type[T], *, what: str = "the request body") -> T:
    """The body decoded into ``typ``; 413 past the limit (read no further), 400 naming the field."""
    limit = context(request).max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is {declared} bytes; the limit is {limit} bytes", term="body")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} is over the limit of {limit} bytes", term="body")
        chunks.append(chunk)
    data = b"".join(chunks)
    if not data.strip():
        raise BadRequest(f"{what} is empty; send a JSON object", term="body")
    return decode_json(typ, data, what)  # a 400 whose term is the field (the OpenAI error's ``param``)


def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(body), status_code=status, headers=headers, media_type="application/json")
