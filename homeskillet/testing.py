"""Fixtures for your own tests (and ours): a real nats-server on a free port, and a Homeskillet
runtime on it under a private subject prefix, so tests sharing one server never cross.

Use as a pytest plugin: ``pytest_plugins = ["homeskillet.testing"]``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import msgspec
import pytest

from .config import PoolSpec, Settings
from .natsd import NatsCluster, NatsServer
from .runtime import Runtime

__all__ = ["echo_pool", "nats_cluster", "nats_server", "nats_url", "runtime", "serve_asgi", "start_runtime"]


def echo_pool(name: str = "echo/standard", pool_class: str = "standard", **kw: Any) -> PoolSpec:
    """An echo pool spec; keyword arguments override any PoolSpec field."""
    defaults: dict[str, Any] = {"vram_mb": 81920, "tflops": 990.0, "usd_per_mtok_in": 0.1, "usd_per_mtok_out": 0.2,
                                "start_ms": 5.0, "ms_per_token": 0.1}
    return msgspec.convert({"name": name, "provider": "echo", "pool_class": pool_class, **defaults, **kw}, PoolSpec)


@asynccontextmanager
async def start_runtime(url: str, pools: list[PoolSpec] | None = None, **settings: Any) -> AsyncIterator[Runtime]:
    """A runtime on ``url`` with its own subject prefix; echo/standard by default."""
    s = Settings(nats=[url], prefix=f"t{uuid.uuid4().hex[:10]}", pools=pools if pools is not None else [echo_pool()],
                 **settings)
    rt = Runtime(s)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@contextlib.contextmanager
def serve_asgi(app: Any, ready_path: str = "/", *, timeout_s: float = 15.0) -> Iterator[str]:
    """Serve an ASGI app (a simulator, a node, our HTTP API) with uvicorn on a free loopback
    port in a thread; yield its base URL once ``ready_path`` answers with any status below 500."""
    import uvicorn

    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
    # every small response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen()  # connections queue in the backlog until uvicorn starts accepting
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(url + ready_path, timeout=5).status_code < 500:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError(f"the app on {url} did not answer {ready_path} within {timeout_s:g}s")
            time.sleep(0.02)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(name=f"hs-test-{uuid.uuid4().hex[:6]}")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed nats-server nodes with JetStream (``urls``; ``kill(k)`` / ``restart(k)``).
    Shared by the session: a test that kills a node restarts it, or makes its own cluster."""
    with NatsCluster(3, name=f"hs-test-{uuid.uuid4().hex[:6]}") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def runtime(nats_url: str) -> AsyncIterator[Runtime]:
    async with start_runtime(nats_url) as rt:
        yield rt
