"""One Homeskillet process, assembled: NATS (embedded or given), actors, pool hosts, orchestrator,
gateway and the NATS ingress. ``homeskillet up``, ``demo``, ``ask`` and the test fixtures all
build this same thing; a pool-only process (``homeskillet pool serve``) is the same Runtime with
the query side switched off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS

from .auth import Authenticator
from .broker import BookView, BrokerActor, BrokerState, Negotiator
from .budgets import Budgets
from .cache import make_cache
from .config import PoolSpec, Settings
from .covenant import CovenantBook
from .distill.distiller import Distiller
from .errors import DeadlineExceeded, HomeskilletError
from .gateway import Gateway
from .ids import new_id
from .ingress.http_server import HttpServer, bind_listen, parse_listen
from .ingress.nats import NatsIngress, respond
from .ingress.reservation import ReservationIngress
from .ingress.reservation_port import ReservationPorts
from .ledger import LedgerActor, LedgerReport, LedgerState, Report
from .limits import RateLimiter
from .natsd import NatsServer, default_data_dir, wait_for_jetstream
from .orchestrator import Orchestrator
from .parking import ParkedQuery, ParkingLot
from .providers.base import Connector, connector_class
from .reservations import Reservations
from .strike import Dispatcher
from .subjects import Subjects
from .supervisor import Supervisor
from .telemetry import get_logger
from .wire import Answer, Query
from .worker import PoolHost

__all__ = ["Runtime", "make_connector", "tune_gc_for_serving"]

log = get_logger("homeskillet.runtime")


def tune_gc_for_serving(gen0_threshold: int = 10_000) -> None:
    """For a long-running server process, once started: freeze what start-up built (modules,
    classes, covenants, actors never die, yet every full collection walked them) and collect the
    young generation less often (a query allocates ~100 tracked objects that mostly die by
    reference counting). Measured on the query path: about 13% less CPU per query. Not done by
    ``Runtime.start``, because a library should not retune the garbage collector of its host."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


def make_connector(spec: PoolSpec) -> Connector:
    cls = connector_class(spec.provider)
    try:
        return cls(**spec.options)
    except TypeError as exc:  # an option the connector does not take: name the pool and the option
        raise HomeskilletError(f"pool {spec.name}: bad options for the {spec.provider!r} connector: {exc}") from None


class Runtime:
    def __init__(self, settings: Settings | None = None, *, serve_queries: bool = True, nats_port: int = -1,
                 ephemeral: bool = True) -> None:
        self.settings = settings or Settings()
        self.serve_queries = serve_queries
        self.nats_port = nats_port
        self.ephemeral = ephemeral  # embedded JetStream in a temporary directory
        self.subjects = Subjects(self.settings.prefix)
        self.natsd: NatsServer | None = None
        self.nc: NATS | None = None
        self.supervisor = Supervisor()
        self.hosts: dict[str, PoolHost] = {}
        self.disabled: dict[str, str] = {}  # pool -> why it is not served here
        self.gateway: Gateway | None = None
        self.distiller: Distiller | None = None  # set when a covenant has a [distill] table
        self.instance = new_id()  # this orchestrator, as the owner of parked queries
        self.http: HttpServer | None = None  # settings.http.listen: the HTTP API on this loop
        self._http_sock: socket.socket | None = None  # bound at the start of start-up, until served

    @property
    def nats_urls(self) -> list[str]:
        return list(self.settings.nats) or ([self.natsd.url] if self.natsd else [])

    async def start(self) -> Runtime:
        """Start everything; a failure part-way stops what had started (actor threads included)
        before the error propagates, so a bad start never leaves a hung process."""
        try:
            return await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop()
            raise

    async def _start(self) -> Runtime:
        s = self.settings
        if self.serve_queries and s.http.listen:  # bound first: a taken port fails start-up at once
            self._http_sock = bind_listen(s.http.listen)
        if not s.nats:
            data = None if self.ephemeral else Path(s.data_dir) if s.data_dir else default_data_dir()
            self.natsd = NatsServer(port=self.nats_port, data_dir=data)
            await asyncio.to_thread(self.natsd.start)
        self.nc = await nats.connect(servers=self.nats_urls, name="homeskillet", max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.25, connect_timeout=5, **s.nats_auth.connect_options())
        if self.serve_queries:
            view = BookView()
            broker = self.supervisor.start("broker", BrokerActor, BrokerState(view))
            self.ledger = self.supervisor.start("ledger", LedgerActor, LedgerState(s.retention.ledger_settled))
            self.negotiator = Negotiator(self.nc, self.subjects, broker, view, bid_window_ms=s.bid_window_ms)
            await self.negotiator.start()
            self.dispatcher = Dispatcher(self.nc, self.subjects, silence_ms=s.silence_ms)
            await self.dispatcher.start()
        for spec in s.pools:
            await self.add_pool(spec)
        if self.serve_queries:
            await wait_for_jetstream(self.nc)  # the durable queue and tenant state live in JetStream
            covenants = CovenantBook.load(s.covenants_dir or None)
            self.parking = ParkingLot(self.nc, self.subjects, self.instance, claim_ttl_s=s.parked_claim_ttl_s,
                                      replicas=s.nats_replicas, journal=s.journal_queries)
            # Tenant budgets and rate limits live in JetStream KV, shared with every other instance.
            js, r = self.nc.jetstream(), s.nats_replicas
            budgets = await Budgets.open(js, s.prefix, s.tenants, replicas=r) if s.tenants else None
            limits = await RateLimiter.open(js, s.prefix, s.tenants, replicas=r) if s.tenants else None
            self.distiller = await self._distiller(covenants)
            self.orchestrator = Orchestrator(self.nc, self.subjects, covenants, self.negotiator, self.dispatcher,
                                             self.ledger, max_fragments=s.max_fragments, budgets=budgets,
                                             parking=self.parking, distiller=self.distiller,
                                             cache=make_cache(s.cache_embedder, s.cache_max_entries))
            self.reservations = Reservations(self.nc, self.subjects, lambda: self.negotiator.view.quotes,
                                             budgets=budgets, ended_max=s.retention.reservations_ended)
            self.gateway = Gateway(self.orchestrator, self.reservations, max_prompt_bytes=s.max_prompt_bytes,
                                   limits=limits, max_results=s.retention.results)
            auth = Authenticator(s.auth)  # the same identity rule on NATS as on HTTP and MCP
            self.ingress = NatsIngress(self.nc, self.subjects, self.gateway, auth, self.parking)
            await self.ingress.start()
            self.reservation_ingress = ReservationIngress(self.nc, self.subjects, self.gateway, auth)
            await self.reservation_ingress.start()
            await self.wait_for_pools(list(self.hosts))
            await self.parking.start(self._resume)
            if s.http.listen:
                sock, self._http_sock = self._http_sock, None
                self.http = await HttpServer.start(self.gateway, s, sock)
                if len(s.http.reservation_ports) != 2:
                    raise HomeskilletError("http.reservation_ports must be [LOW, HIGH], e.g. [3000, 15000]")
                low, high = s.http.reservation_ports
                self.gateway.ports = ReservationPorts(self.gateway, auth, s.http,
                                                      host=parse_listen(s.http.listen)[0], low=low, high=high)
        return self

    async def _distiller(self, covenants: CovenantBook) -> Distiller | None:
        """A distiller when some covenant has a ``[distill]`` table (others never touch it)."""
        s = self.settings
        if not s.distillation.enabled or not any(c.distill and c.distill.enabled for c in covenants.all()):
            return None
        assert self.nc is not None
        d = Distiller(self.nc, self.subjects, settings=s.distillation, replicas=s.nats_replicas)
        await d.start()
        return d

    async def add_pool(self, spec: PoolSpec) -> PoolHost | None:
        assert self.nc is not None
        try:
            connector = make_connector(spec)
        except (HomeskilletError, RuntimeError, ImportError) as exc:
            # An optional engine that is not installed disables its pool, loudly, not the process.
            self.disabled[spec.name] = str(exc)
            log.warning("pool_disabled", pool=spec.name, reason=str(exc))
            return None
        host = PoolHost(self.nc, self.subjects, spec, connector, self.supervisor, self.settings)
        await host.start()
        self.hosts[spec.name] = host
        return host

    async def wait_for_pools(self, names: list[str], timeout: float = 10.0) -> None:
        """Until the broker's book holds a quote from each named pool (start-up only)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            have = {q.offer.pool for q in self.negotiator.view.quotes}
            if set(names) <= have:
                return
            await asyncio.sleep(0.005)
        raise HomeskilletError(f"pools did not quote within {timeout:g}s: {sorted(set(names) - have)}")

    async def _resume(self, rec: ParkedQuery) -> None:
        """Serve a query another orchestrator parked and did not live to answer."""
        assert self.gateway is not None and self.nc is not None
        query = rec.query
        outcome: Answer | HomeskilletError
        try:
            # What is left of its hard deadline, counted from when it was first accepted: a resumed
            # query is answered in time or with an explicit 504, never late.
            hard_ms = self.orchestrator.covenants.resolve(query).qos.hard_deadline_ms
            left = (rec.parked_at_ms + hard_ms) / 1000.0 - time.time()
            if left <= 0:
                raise DeadlineExceeded(f"query {query.query_id}: its hard deadline of {hard_ms} ms passed before "
                                       "a peer could resume it", term="qos.hard_deadline_ms")
            try:
                async with asyncio.timeout(left):
                    outcome = await self.gateway.ask(query, reply=rec.reply)
            except TimeoutError:
                raise DeadlineExceeded(f"query {query.query_id}: hard deadline of {hard_ms} ms passed while "
                                       "resumed", term="qos.hard_deadline_ms") from None
        except HomeskilletError as exc:
            outcome = exc
        if rec.reply:
            await respond(self.nc, rec.reply, outcome, query.query_id)
        await self.parking.finish(query.query_id)

    async def ask(self, query: Query | None = None, **fields: Any) -> Answer:
        if self.gateway is None:
            raise HomeskilletError("this runtime does not serve queries")
        return await self.gateway.ask(query or msgspec.convert(fields, Query))

    async def ledger_report(self, tenant: str | None = None) -> LedgerReport:
        return await self.ledger.call(Report(tenant))  # type: ignore[no-any-return]

    async def stop(self) -> None:
        """Stop whatever has started (also after a partial start)."""
        if self._http_sock is not None:
            self._http_sock.close()
            self._http_sock = None
        if self.http is not None:
            await self.http.stop()
        if self.gateway is not None and isinstance(self.gateway.ports, ReservationPorts):
            await self.gateway.ports.close_all()
        for part in ("parking", "ingress", "reservation_ingress", "distiller"):
            if (obj := getattr(self, part, None)) is not None:
                await obj.stop()
        if (reservations := getattr(self, "reservations", None)) is not None:
            await reservations.close()
        for host in self.hosts.values():
            await host.stop()
        for part in ("dispatcher", "negotiator"):
            if self.nc is not None and (obj := getattr(self, part, None)) is not None:
                await obj.stop()
        if self.nc is not None and self.nc.is_connected:
            await self.nc.drain()
        self.supervisor.stop_all()
        if self.natsd is not None:
            await asyncio.to_thread(self.natsd.stop)

    async def __aenter__(self) -> Runtime:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
