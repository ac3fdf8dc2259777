"""``ssh/*`` pools: Ollama nodes reached over SSH, one pool for one or many nodes.

Nodes come from an OpenSSH config file (``sshmesh.read_nodes``). Each node gets one SSH
connection (keepalive, reconnect on loss) and the unchanged ``ollama`` connector, whose HTTP
runs over SSH ``direct-tcpip`` channels to the node's ``127.0.0.1:<remote_port>``
(``sshtunnel``): no remote shell command, nothing interpolated into a shell.

A strike goes to the node that holds its model, warm first, then by the load score (requests
in flight × EWMA latency); if that node cannot be reached or is busy, the next one is tried
before the strike fails. Private keys and passphrases come through ``homeskillet.secrets``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import HomeskilletError, ProviderAuthError, ProviderError
from ..secrets import resolve_secret
from .base import AllocationRequest, Connector, Health, InferRequest, InferResult, ProviderOffer, register
from .ollama import OllamaConnector
from .sshmesh import SshLink, SshNode, read_nodes
from .sshtunnel import TunnelTransport

__all__ = ["SshConnector"]

_NODE_KEYS = {"remote_port"} | {
    p for p in inspect.signature(OllamaConnector.__init__).parameters if p not in {"self", "base_url", "name", "client",
                                                                                "transport"}}


class _Node:
    def __init__(self, spec: SshNode, link: SshLink, ollama: OllamaConnector) -> None:
        self.spec, self.link, self.ollama = spec, link, ollama
        self.checked_at = 0.0  # monotonic time of the last refresh; 0 = never
        self.detail = "not checked yet"
        self.error: HomeskilletError | None = None  # why the last refresh failed


@register("ssh")
class SshConnector(Connector):
    unsupported = {
        "allocate": "an Ollama node over SSH serves the models it holds; there is nothing to allocate",
        "release": "an Ollama node over SSH holds no allocation to release",
        "metrics": "Ollama keeps no per-allocation metrics; health() carries load and warm models per node",
        "preemptible": "an Ollama node over SSH is never preempted",
        "bid": "an Ollama node has no market price: it costs $0 and its capacity is the limit",
    }

    def __init__(self, *, ssh_config: str, hosts: list[str] | None = None, known_hosts: str | None = None,
                 remote_host: str = "127.0.0.1", remote_port: int = 11434,
                 nodes: dict[str, dict[str, Any]] | None = None,
                 keepalive_s: float | None = None, keepalive_count: int | None = None, connect_timeout_s: float = 10.0,
                 client_key_env: str | None = None, client_key_file: str | None = None,
                 passphrase_env: str | None = None, passphrase_file: str | None = None,
                 refresh_s: float = 30.0, **ollama: Any) -> None:
        per_node = nodes or {}
        self._check_keys(ollama, per_node, hosts)
        passphrase = resolve_secret("ssh key passphrase", env=passphrase_env, file=passphrase_file, required=False)
        client_key = resolve_secret("ssh client key", env=client_key_env, file=client_key_file, required=False) \
            if client_key_env or client_key_file else None
        rows = read_nodes(ssh_config, hosts, known_hosts=known_hosts, keepalive_s=keepalive_s,
                          keepalive_count=keepalive_count, connect_timeout_s=connect_timeout_s,
                          client_key=client_key, passphrase=passphrase)
        self.ssh_config, self.refresh_s = str(Path(ssh_config).expanduser()), refresh_s
        self.nodes: dict[str, _Node] = {}
        for spec, options in rows:
            extra = dict(per_node.get(spec.alias, {}))
            port = int(extra.pop("remote_port", remote_port))
            link = SshLink(spec, options)
            conn = OllamaConnector(base_url=f"http://{remote_host}:{port}", name=spec.alias,
                                   transport=TunnelTransport(link.open_channel), **(ollama | extra))
            self.nodes[spec.alias] = _Node(spec, link, conn)

    @staticmethod
    def _check_keys(ollama: dict[str, Any], per_node: dict[str, dict[str, Any]], hosts: list[str] | None) -> None:
        known = ", ".join(sorted(_NODE_KEYS - {"remote_port"}))
        if bad := sorted(set(ollama) - _NODE_KEYS):
            raise HomeskilletError(f"ssh: unknown option {', '.join(bad)}; node options are: {known}")
        for alias, opts in per_node.items():
            if hosts is not None and alias not in hosts:
                raise HomeskilletError(f"ssh: nodes.{alias} is not one of hosts ({', '.join(hosts)})")
            if bad := sorted(set(opts) - _NODE_KEYS):
                raise HomeskilletError(f"ssh: unknown option nodes.{alias}.{', '.join(bad)}; "
                                       f"node options are: remote_port, {known}")

    def link(self, alias: str) -> SshLink:
        return self.nodes[alias].link

    # -- node state -----------------------------------------------------------------------------

    async def _check(self, node: _Node) -> Health:
        try:
            health, node.error = await node.ollama.refresh(), None
        except HomeskilletError as exc:
            node.error = exc
            load = node.ollama.load
            health = Health(ok=False, detail=str(exc), active=load.active, load=load.load)
        node.checked_at, node.detail = time.monotonic(), health.detail
        return health

    async def _refresh_stale(self) -> None:
        now = time.monotonic()
        stale = [n for n in self.nodes.values() if not n.checked_at or now - n.checked_at > self.refresh_s]
        await asyncio.gather(*(self._check(n) for n in stale))

    async def _candidates(self, model: str) -> list[_Node]:
        """Nodes holding ``model``: answering ones first, warm first, then the soonest to finish."""
        await self._refresh_stale()
        holding = [n for n in self.nodes.values() if n.ollama.holds(model)]
        if not holding:
            errors = [n.error for n in self.nodes.values() if n.error is not None]
            if len(errors) == len(self.nodes):  # no node answered: say why, keeping the kind of failure
                if len(errors) == 1:
                    raise errors[0]
                kind = ProviderAuthError if all(isinstance(e, ProviderAuthError) for e in errors) else ProviderError
                raise kind("no node answered: " + " | ".join(map(str, errors)), provider="ssh")
            seen = "; ".join(f"{a}: {n.detail}" for a, n in self.nodes.items())
            raise ProviderError(f"no node holds {model!r} ({seen}); pull it on a node (ollama pull)",
                                provider="ssh", http_status=404)
        # A node whose last check failed is a last resort: its model list may be stale.
        return sorted(holding, key=lambda n: (n.error is not None, n.ollama.resolve(model) not in n.ollama.warm,
                                              n.ollama.load.expected_ms(), n.spec.alias))

    @staticmethod
    def _next_or_raise(node: _Node, exc: ProviderError, errors: list[str], last: bool) -> None:
        node.checked_at = 0.0  # look again before trusting it next time
        errors.append(str(exc))
        if not exc.retryable or last:
            if len(errors) > 1:
                raise ProviderError("every node failed: " + " | ".join(errors), provider="ssh",
                                    http_status=exc.http_status) from exc
            raise exc

    # -- the Connector interface ------------------------------------------------------------------

    async def infer(self, req: InferRequest) -> InferResult:
        candidates, errors = await self._candidates(req.model), list[str]()
        for i, node in enumerate(candidates):
            try:
                return await node.ollama.infer(req)
            except ProviderError as exc:
                self._next_or_raise(node, exc, errors, last=i == len(candidates) - 1)
        raise AssertionError("unreachable")

    async def stream(self, req: InferRequest) -> AsyncIterator[str]:
        candidates, errors = await self._candidates(req.model), list[str]()
        for i, node in enumerate(candidates):
            started = False
            try:
                async for piece in node.ollama.stream(req):
                    started = True
                    yield piece
                return
            except ProviderError as exc:
                if started:  # the client has part of this node's answer: no silent switch
                    raise
                self._next_or_raise(node, exc, errors, last=i == len(candidates) - 1)

    async def health(self) -> Health:
        checks = await asyncio.gather(*(self._check(n) for n in self.nodes.values()))
        by_node = dict(zip(self.nodes, checks, strict=True))
        ok = [h for h in by_node.values() if h.ok]
        return Health(ok=bool(ok), detail="; ".join(f"{a}: {h.detail}" for a, h in by_node.items()),
                      latency_ms=max(h.latency_ms for h in checks),
                      warm_models=sorted({m for h in checks for m in h.warm_models}),
                      active=sum(h.active for h in checks), load=min((h.load for h in ok), default=0.0))

    async def node_health(self) -> dict[str, Health]:
        checks = await asyncio.gather(*(self._check(n) for n in self.nodes.values()))
        return dict(zip(self.nodes, checks, strict=True))

    async def quote(self, want: AllocationRequest) -> list[ProviderOffer]:
        """One $0 offer per reachable node that holds the model asked for (any, when none is)."""
        by_node = await self.node_health()
        if not any(h.ok for h in by_node.values()):
            raise ProviderError("no node answered: " + "; ".join(f"{a}: {h.detail}" for a, h in by_node.items()),
                                provider="ssh")
        return [n.ollama.offer() for a, n in self.nodes.items()
                if by_node[a].ok and (not want.model or n.ollama.holds(want.model))]

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.ollama.close()
            await node.link.close()

    def table(self) -> Sequence[SshNode]:
        """The node table as read from the config file."""
        return [n.spec for n in self.nodes.values()]
