"""The seeds' distillation endpoints under ``/api/v1/distillation`` (thin: decode, ``DistillService``, encode).

- ``POST /query`` (``input``, ``teacher_model``, ``student_model``, ``capture_training``): the teacher
  answers; the student shadows it and the pair is kept, unless ``capture_training`` is false.
- ``POST /train`` (``covenant`` or ``student_model``, ``num_examples``, ``validation_split``): a
  training round in the background (202); its progress and outcome are ``hs.events.distill.*``.
- ``GET /export?format=jsonl&student=``: the caller's pairs as chat fine-tuning JSONL.
- ``GET /status``: the caller's students: stage, adapter, held-out and live agreement.

Every call acts for the caller's tenant (``hs:query``); pairs and students of other tenants are not seen.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..distill.dataset import to_chat_record
from ..distill.service import DistillService
from ..errors import BadRequest, NotFound
from ..wire import Query
from .http_common import context, json, principal, read_body

__all__ = ["DistillQuery", "DistillTrain", "routes"]


class DistillQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: str
    teacher_model: str | None = None  # a model or covenant name (the covenant serving it answers)
    covenant: str | None = None
    student_model: str | None = None  # default: the covenant's [distill] student
    capture_training: bool = True
    max_tokens: int | None = None
    tenant: str | None = None


class DistillTrain(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    covenant: str | None = None
    student_model: str | None = None
    num_examples: int | None = None  # at most this many of the newest pairs
    validation_split: float | None = None
    tenant: str | None = None


def service(request: Request) -> DistillService:
    svc = context(request).gateway.distill
    if svc is None:
        raise NotFound("distillation is off here: no covenant has a [distill] table (or DISTILLATION_ENABLED=0)",
                       term="distill")
    return svc


async def query(request: Request) -> Response:
    body = await read_body(request, DistillQuery, what="the distillation query")
    who = principal(request, body.tenant, scope="hs:query")
    if not (body.covenant or body.teacher_model):
        raise BadRequest("name the teacher: 'teacher_model' or 'covenant'", term="teacher_model")
    distill: dict[str, Any] = {"enabled": body.capture_training}
    if body.student_model:
        distill["student"] = body.student_model
    q = Query(prompt=body.input, tenant=who.tenant, covenant=body.covenant, model=body.teacher_model,
              max_tokens=body.max_tokens, overrides={"distill": distill})
    return json(await context(request).gateway.ask(q, who))


async def train(request: Request) -> Response:
    body = await read_body(request, DistillTrain, what="the training request")
    who = principal(request, body.tenant, scope="hs:query")
    return json(service(request).train(who.tenant, covenant=body.covenant, student=body.student_model,
                                       num_examples=body.num_examples, validation_split=body.validation_split), 202)


async def export(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    if request.query_params.get("format", "jsonl") != "jsonl":
        raise BadRequest("format must be jsonl (OpenAI's chat fine-tuning format)", term="format")
    try:
        threshold = float(request.query_params.get("confidence_threshold", "0") or 0)
    except ValueError:
        raise BadRequest("confidence_threshold must be a number in 0..1", term="confidence_threshold") from None
    pairs = await service(request).export(who.tenant, request.query_params.get("student", ""), threshold)
    return Response(b"".join(msgspec.json.encode(to_chat_record(p)) + b"\n" for p in pairs),
                    media_type="application/jsonl")


async def status(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    return json(service(request).status(who.tenant))


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/distillation/query", query, methods=["POST"]),
        Route("/api/v1/distillation/train", train, methods=["POST"]),
        Route("/api/v1/distillation/export", export, methods=["GET"]),
        Route("/api/v1/distillation/status", status, methods=["GET"]),
    ]
