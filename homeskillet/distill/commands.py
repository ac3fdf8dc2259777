"""``homeskillet distill status|export|train|promote|rollback``: the loop from a terminal.

Each command talks to the deployment's NATS (``--nats``, the config's ``nats``, or a local ``up``
on 4222): students' state is in its KV bucket and pairs in ``HS_DISTILL``, so a command changes
what every orchestrator serves at once.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from ..config import Settings, load_settings
from ..errors import BadRequest, NotFound
from ..subjects import Subjects
from .canary import Decision, Stage
from .dataset import split_pairs, to_chat_record, trainable, write_jsonl
from .distiller import Distiller, student_key
from .paths import adapters_dir, distill_dir

__all__ = ["add_parsers", "distill_command"]


def add_parsers(sub: Any) -> None:
    d = sub.add_parser("distill", help="knowledge distillation: students, pairs, training, promotion")
    dsub = d.add_subparsers(dest="distill_cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats", help="NATS URL(s); default: the config's, else a local `up` on 4222")
    common.add_argument("--config", help="settings TOML file")
    dsub.add_parser("status", parents=[common], help="every student: stage, adapter, held-out and live agreement")
    ex = dsub.add_parser("export", parents=[common], help="captured pairs as chat fine-tuning JSONL")
    ex.add_argument("--student", required=True)
    ex.add_argument("--tenant", required=True, help="whose pairs ('*': every tenant)")
    ex.add_argument("--out", default="", help="a directory for train.jsonl and valid.jsonl; default: stdout")
    ex.add_argument("--validation-split", type=float, default=0.2)
    ex.add_argument("--confidence-threshold", type=float, default=0.8)
    tr = dsub.add_parser("train", parents=[common], help="train the next version of a covenant's student")
    tr.add_argument("--covenant", required=True)
    tr.add_argument("--tenant", required=True)
    tr.add_argument("--model-dir", default="", help="the base model's mlx-lm directory (default: the converted one)")
    for name in ("promote", "rollback"):
        c = dsub.add_parser(name, parents=[common], help=f"{name} a student now (an operator's decision)")
        c.add_argument("student", help="the student key, as `distill status` lists it")


def _settings(args: argparse.Namespace) -> Settings:
    s = load_settings(args.config)
    if args.nats:
        s = msgspec.structs.replace(s, nats=[u.strip() for u in args.nats.split(",") if u.strip()])
    if not s.nats:
        s = msgspec.structs.replace(s, nats=["nats://127.0.0.1:4222"])
    return s


async def _open(s: Settings) -> tuple[Any, Distiller]:
    import nats

    nc = await nats.connect(servers=s.nats, connect_timeout=5, max_reconnect_attempts=1,
                            **s.nats_auth.connect_options())
    d = Distiller(nc, Subjects(s.prefix), settings=s.distillation)
    await d.start()
    return nc, d


async def _run(args: argparse.Namespace) -> int:
    s = _settings(args)
    nc, d = await _open(s)
    out = Console()
    try:
        match args.distill_cmd:
            case "status":
                t = Table("student", "tenant", "stage", "adapter", "held-out before", "after", "live", "pairs")
                for key, st in sorted(d.states.items()):
                    live = st.live_agreement()
                    name = key.split(".", 1)[0]
                    n_pairs = str(await d.store.count(st.tenant, name)) if st.tenant else "-"
                    t.add_row(key, st.tenant or "(shared)", st.stage, st.adapter or "(base)", _pct(st.heldout_before),
                              _pct(st.heldout_after), _pct(live), n_pairs)
                out.print(t if d.states else "no students yet: a covenant with a [distill] table creates them")
            case "export":
                pairs = trainable(await d.store.pairs(args.tenant, args.student), args.confidence_threshold)
                if args.out:
                    split = split_pairs(pairs, args.validation_split)
                    n = write_jsonl(Path(args.out) / "train.jsonl", (to_chat_record(p) for p in split.train))
                    m = write_jsonl(Path(args.out) / "valid.jsonl", (to_chat_record(p) for p in split.valid))
                    print(f"{n} training and {m} validation examples in {args.out}", file=sys.stderr)
                else:
                    for p in pairs:
                        sys.stdout.write(msgspec.json.encode(to_chat_record(p)).decode() + "\n")
            case "train":
                return await _train(args, s, d, out)
            case "promote" | "rollback":
                if args.student not in d.states:
                    raise NotFound(f"no student {args.student!r}; `homeskillet distill status` lists them",
                                   term="student")
                stage: Stage = "promoted" if args.distill_cmd == "promote" else "rolled_back"
                await d.apply(args.student, Decision(action=args.distill_cmd, stage=stage, reason="operator"))
                out.print(f"{args.student}: {stage}")
        return 0
    finally:
        await d.stop()
        await nc.close()


async def _train(args: argparse.Namespace, s: Settings, d: Distiller, out: Console) -> int:
    from ..covenant import CovenantBook
    from .pipeline import run_round

    cov = CovenantBook.load(s.covenants_dir or None).get(args.covenant)
    terms = d.terms(cov.distill)
    if terms is None:
        raise BadRequest(f"covenant {cov.name!r} has no enabled [distill] table", term="covenant")
    model_dir = args.model_dir
    if not model_dir:
        from ..localmodel import resolve_model_dir

        model_dir = str(resolve_model_dir())
    result = await run_round(d, terms, args.tenant, work_root=distill_dir(), adapters_root=adapters_dir(),
                             base_model_dir=model_dir,
                             progress=lambda p: out.print(f"step {p.step}/{p.steps} loss {p.loss:.3f}"))
    key = student_key(terms, args.tenant)
    st = d.state(key)
    out.print(f"{key}: v{st.version} {st.stage}; held-out before {_pct(st.heldout_before)}, after "
              f"{_pct(st.heldout_after)}; {result.steps} steps in {result.elapsed_s:.0f} s")
    return 0


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def distill_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
