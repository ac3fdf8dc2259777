"""The fuzz harness's world: one real runtime (a real nats-server, echo pools, tenant budgets and rate
limits in JetStream KV) on a loop of its own thread, so hypothesis's synchronous tests can drive it;
the HTTP app in-process over ``httpx.ASGITransport``, a NATS client, and the official MCP client
connected in-process to our MCP server. Every test runs with the logs captured: a traceback (or an
error-level event) fails it. The tally of inputs per decoder is printed at the end."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import nats
import pytest
import structlog
from fuzzkit import FULL, TALLY, TENANT, Pure, World
from mcp.client.client import Client

from homeskillet.auth import Authenticator, AuthSettings
from homeskillet.config import TenantSettings
from homeskillet.ingress.http import create_http_app
from homeskillet.ingress.mcp import McpServer
from homeskillet.testing import echo_pool, start_runtime

POOLS = [echo_pool("echo/standard", context_tokens=4096), echo_pool("echo/premium", pool_class="premium",
                                                                    context_tokens=8192),
         echo_pool("echo/preemptible", pool_class="preemptible", preemptible=True, context_tokens=2048)]


@pytest.fixture(scope="session")
def world(nats_url: str) -> Iterator[World]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-loop", daemon=True)
    thread.start()
    ready: Future[World] = Future()
    stop = asyncio.Event()

    async def host() -> None:
        tenants = {TENANT: TenantSettings(daily_usd=1000.0, requests_per_minute=10**7, tokens_per_minute=10**9)}
        try:
            async with start_runtime(nats_url, POOLS, tenants=tenants) as rt:
                app = create_http_app(rt.gateway, auth=Authenticator(AuthSettings()))
                nc = await nats.connect(nats_url)
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fuzz") as http, \
                        Client(McpServer(rt.gateway).server) as mcp:
                    ready.set_result(World(loop, rt, http, nc, mcp))
                    await stop.wait()
                await nc.close()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.run_coroutine_threadsafe(host(), loop)
    w = ready.result(60)
    yield w
    loop.call_soon_threadsafe(stop.set)
    task.result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="session")
def pure(world: World) -> Pure:
    """The drivers of the shared decode + validation, over the runtime's real covenants and quotes."""
    return Pure(world.rt.orchestrator.covenants, world.rt.negotiator.pools())


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_tracebacks() -> Iterator[None]:
    """Fails the test on any traceback or error-level event in the logs (structlog and stdlib)."""
    handler = _Errors()
    logging.getLogger().addHandler(handler)
    try:
        with structlog.testing.capture_logs() as events:
            yield
    finally:
        logging.getLogger().removeHandler(handler)
    bad = [e for e in events if e.get("exc_info") or e.get("log_level") in ("error", "critical")]
    bad_std = [f"{r.name}: {r.getMessage()}" for r in handler.records]
    TALLY_TRACEBACKS.extend(str(e)[:300] for e in bad)
    TALLY_TRACEBACKS.extend(bad_std)
    assert not bad and not bad_std, f"tracebacks or errors in the log: {bad[:3]} {bad_std[:3]}"


TALLY_TRACEBACKS: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    tr = terminalreporter
    tr.section(f"fuzz tally ({'full run' if FULL else 'suite share'})")
    tr.write_line(f"| {'decoder':<34} | {'inputs':>7} | {'accepted':>8} | {'4xx':>6} | {'503/504 unservable':>18} "
                  f"| {'other 5xx':>9} | {'time s':>7} |")
    tr.write_line(f"|{'-' * 36}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 20}|{'-' * 11}|{'-' * 9}|")
    for name, row in sorted(TALLY.items()):
        tr.write_line(f"| {name:<34} | {row.inputs:>7} | {row.accepted:>8} | {row.rejected:>6} | "
                      f"{row.unservable:>18} | {row.server_errors:>9} | {row.seconds:>7.1f} |")
        for crash in row.crashes:
            tr.write_line(f"    crash: {crash}")
    tr.write_line(f"tracebacks / error events in the log: {len(TALLY_TRACEBACKS)}")
