"""The seeds' distillation endpoints under ``/api/v1/distillation`` (thin: decode, the distiller, encode).

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

from ..distill.canary import StudentState
from ..distill.dataset import to_chat_record, trainable
from ..distill.distiller import Distiller, student_key
from ..errors import BadRequest, NotFound
from ..wire import Covenant, Query
from .http_common import context, json, principal, read_body

__all__ = ["DistillQuery", "DistillTrain", "routes"]


class DistillQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    input: str
    teacher_model: str | None = None  # a model or covenant name; default: the covenant that serves the model
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


def _distiller(request: Request) -> Distiller:
    d = context(request).gateway.orchestrator.distiller
    if d is None:
        raise NotFound("distillation is off here: no covenant has a [distill] table (or DISTILLATION_ENABLED=0)",
                       term="distill")
    return d


def _family(request: Request, covenant: str | None, student: str | None) -> Covenant:
    """The [distill] covenant named, or the one whose student is ``student``."""
    book = context(request).gateway.orchestrator.covenants
    for cov in book.all():
        if cov.distill and ((covenant and cov.name == covenant) or (not covenant and cov.distill.student == student)):
            return cov
    raise NotFound(f"no covenant with a [distill] table matches covenant={covenant!r} student_model={student!r}; "
                   f"distilled covenants: {', '.join(c.name for c in book.all() if c.distill) or 'none'}",
                   term="covenant" if covenant else "student_model")


async def query(request: Request) -> Response:
    body = await read_body(request, DistillQuery, what="the distillation query")
    who = principal(request, body.tenant, scope="hs:query")
    distill: dict[str, Any] = {"enabled": body.capture_training}
    if body.student_model:
        distill["student"] = body.student_model
    q = Query(prompt=body.input, tenant=who.tenant, covenant=body.covenant, model=body.teacher_model,
              max_tokens=body.max_tokens, overrides={"distill": distill})
    if not (body.covenant or body.teacher_model):
        raise BadRequest("name the teacher: 'teacher_model' or 'covenant'", term="teacher_model")
    return json(await context(request).gateway.ask(q, who))


async def train(request: Request) -> Response:
    body = await read_body(request, DistillTrain, what="the training request")
    who = principal(request, body.tenant, scope="hs:query")
    d = _distiller(request)
    cov = _family(request, body.covenant, body.student_model)
    terms = d.terms(cov.distill)
    if terms is None:
        raise BadRequest(f"covenant {cov.name!r}: its [distill] table is disabled", term="distill.enabled")
    over: dict[str, Any] = {}
    if body.num_examples is not None:
        if not 1 <= body.num_examples <= 1_000_000:
            raise BadRequest(f"num_examples {body.num_examples} is outside 1..1000000", term="num_examples")
        over["max_examples"] = body.num_examples
    if body.validation_split is not None:
        if not 0.0 <= body.validation_split < 1.0:
            raise BadRequest(f"validation_split {body.validation_split} is outside [0, 1)", term="validation_split")
        over["validation_split"] = body.validation_split
    terms = msgspec.structs.replace(terms, **over)
    d.start_training(terms, who.tenant)
    key = student_key(terms, who.tenant)
    return json({"student": key, "status": "training", "events": f"{d.subjects.prefix}.events.distill.{key}.*"}, 202)


async def export(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    if request.query_params.get("format", "jsonl") != "jsonl":
        raise BadRequest("format must be jsonl (OpenAI's chat fine-tuning format)", term="format")
    student = request.query_params.get("student")
    if not student:
        raise BadRequest("name the student: ?student=<name>", term="student")
    d = _distiller(request)
    threshold = float(request.query_params.get("confidence_threshold", "0") or 0)
    pairs = trainable(await d.store.pairs(who.tenant, student), threshold)
    body = b"".join(msgspec.json.encode(to_chat_record(p)) + b"\n" for p in pairs)
    return Response(body, media_type="application/jsonl")


async def status(request: Request) -> Response:
    who = principal(request, scope="hs:query")
    d = _distiller(request)
    mine: list[StudentState] = [s for s in d.states.values() if s.tenant in (who.tenant, "")]
    return json({"students": mine, "shadow_failures": d.shadow_failures})


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/distillation/query", query, methods=["POST"]),
        Route("/api/v1/distillation/train", train, methods=["POST"]),
        Route("/api/v1/distillation/export", export, methods=["GET"]),
        Route("/api/v1/distillation/status", status, methods=["GET"]),
    ]
