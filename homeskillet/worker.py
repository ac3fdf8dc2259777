"""The strike worker runtime: one ``PoolHost`` per pool, on the I/O loop.

It subscribes to the pool's strike subject (a queue group per pool, so several hosts share the
work), answers calls for proposals and awards on behalf of its agent, publishes standing quotes,
and feeds verdicts back into the agent's track record. A strike runs at most once per
``strike_id`` here: a redelivery waits for, and gets, the first delivery's result. While a strike
runs longer than the heartbeat interval, the host tells the dispatcher it is alive, so a dead
host is noticed by its silence rather than by the covenant's whole deadline.

A strike that asks to stream (``Strike.stream``) runs ``connector.stream_result``: each text piece
goes to the strike's reply inbox as a ``StrikeChunk`` (with its offset in the whole text) as soon
as the engine yields it, then the StrikeOk with the whole text, usage and cost ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .bounded import BoundedDict
from .config import PoolSpec, Settings
from .errors import HomeskilletError, LeaseRejected, Preempted
from .pools import (
    CommitLease,
    CurrentQuote,
    LiveState,
    PoolAgent,
    PoolState,
    ReleaseLease,
    Served,
    live_from,
    revalidate,
)
from .providers.base import AllocationRequest, Connector, InferRequest, InferResult
from .scoring import price_usd
from .sims.base import count_tokens
from .subjects import Subjects, token
from .supervisor import Supervised, Supervisor
from .telemetry import POOL_LOSS_USD, STRIKES, get_logger, labelled
from .wire import (
    Allocated,
    Award,
    CallForProposals,
    CancelStrike,
    ErrorReply,
    FreeAllocation,
    Freed,
    MetricsAsk,
    MetricsReply,
    Rejection,
    Reserve,
    Strike,
    StrikeCancelled,
    StrikeChunk,
    StrikeFailure,
    StrikeOk,
    StrikePreemption,
    StrikeResult,
    decode_agent_msg,
    decode_strike,
    decode_verdicts,
    encode,
)

__all__ = ["HEARTBEAT_HEADER", "PoolHost", "billed_on_cancel"]

log = get_logger("homeskillet.worker")
HEARTBEAT_HEADER = "Hs-Heartbeat"


def billed_on_cancel(spec: PoolSpec, prompt_tokens: int, seconds: float, completion_tokens: int = 0) -> float:
    """What a provider bills for a strike stopped mid-run: the prompt it has processed, the tokens
    it had streamed (0 for a strike that was not streamed: its text comes whole at the end), and
    the time for time-priced pools."""
    return ((prompt_tokens * spec.usd_per_mtok_in + completion_tokens * spec.usd_per_mtok_out) / 1e6
            + spec.usd_per_hour * seconds / 3600.0)


class _Streamed:
    """A streamed strike's side of the reply inbox: each piece out as a StrikeChunk, in order."""

    __slots__ = ("first", "host", "pieces", "reply", "sent", "strike_id", "t0")

    def __init__(self, host: PoolHost, strike_id: str, reply: str, t0: float) -> None:
        self.host, self.strike_id, self.reply, self.t0 = host, strike_id, reply, t0
        self.sent = 0  # characters sent so far: the next chunk's offset
        self.pieces: list[str] = []
        self.first: float | None = None  # perf_counter of the first piece

    async def emit(self, piece: str) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        chunk = StrikeChunk(strike_id=self.strike_id, pool=self.host.spec.name, offset=self.sent, text=piece)
        self.sent += len(piece)
        self.pieces.append(piece)
        await self.host.nc.publish(self.reply, encode(chunk))

    def tokens(self) -> int:
        return count_tokens("".join(self.pieces)) if self.pieces else 0

    def ttft_ms(self) -> float | None:
        return None if self.first is None else (self.first - self.t0) * 1000.0


class _Heartbeats:
    """Says "alive" to the dispatcher for every strike running longer than the heartbeat interval
    (its first beat comes within two intervals). One timer per host while strikes run, not one per
    strike: most strikes finish before the first beat."""

    def __init__(self, host: PoolHost) -> None:
        self.host = host
        self.interval = host.settings.heartbeat_ms / 1000.0
        self.running: dict[int, tuple[str, float]] = {}  # key -> (reply subject, started)
        self._keys = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def start(self, reply: str) -> int:
        key = next(self._keys)
        self.running[key] = (reply, time.monotonic())
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        return key

    def stop(self, key: int) -> None:
        self.running.pop(key, None)

    def _tick(self) -> None:
        self._timer = None
        if not self.running:
            return
        since = time.monotonic() - self.interval
        replies = [reply for reply, started in self.running.values() if started <= since]
        if replies:
            self.host._spawn(self._send(replies))
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    async def _send(self, replies: list[str]) -> None:
        for reply in replies:
            await self.host.nc.publish(reply, b"", headers={HEARTBEAT_HEADER: "1"})

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class PoolHost:
    def __init__(self, nc: NATS, subjects: Subjects, spec: PoolSpec, connector: Connector,
                 supervisor: Supervisor, settings: Settings) -> None:
        self.nc, self.subjects, self.spec, self.connector = nc, subjects, spec, connector
        self.settings = settings
        self.agent: Supervised = supervisor.start(f"pool:{spec.name}", PoolAgent, PoolState(spec, connector.provider))
        self.slots = asyncio.Semaphore(spec.capacity)
        # Idempotency by strike_id, bounded: a redelivery comes within seconds ([retention] strike_results).
        self.results: BoundedDict[str, asyncio.Future[StrikeResult]] = BoundedDict(
            settings.retention.strike_results, f"strike_results[{spec.name}]")
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quoter: asyncio.Task[None] | None = None
        self._live: asyncio.Task[None] | None = None
        self.live: LiveState | None = None  # the provider's price and capacity, as last polled
        self.active = 0  # strikes admitted here and not finished: the loop is the admission authority
        self.heartbeats = _Heartbeats(self)
        self.running: dict[str, asyncio.Task[Any]] = {}  # strike_id -> the task running it (for cancels)
        self.cancels: BoundedDict[str, None] = BoundedDict(  # cancel requests, possibly ahead of their strike
            settings.retention.strike_cancels, f"strike_cancels[{spec.name}]")

    async def start(self) -> None:
        s = self.subjects
        self._subs = [
            await self.nc.subscribe(s.strike(self.spec.name), queue=token(self.spec.name), cb=self._on_strike),
            await self.nc.subscribe(s.cfp_all, cb=self._on_cfp),
            await self.nc.subscribe(s.agent(self.spec.name), cb=self._on_agent),
            await self.nc.subscribe(s.verdict(self.spec.name), cb=self._on_verdict),
        ]
        if self.connector.supports("quote"):
            await self.refresh_live()  # the first quote already carries the provider's live price
            self._live = asyncio.create_task(self._live_loop(), name=f"live:{self.spec.name}")
        await self.publish_quote()
        self._quoter = asyncio.create_task(self._quote_loop(), name=f"quotes:{self.spec.name}")

    async def stop(self) -> None:
        self.heartbeats.cancel()
        for loop_task in (self._quoter, self._live):
            if loop_task:
                loop_task.cancel()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for t in list(self._tasks):
            t.cancel()
        await self.connector.close()

    # --- quotes ----------------------------------------------------------------------------------

    async def publish_quote(self) -> None:
        quote = await self.agent.call(CurrentQuote(ttl_ms=self.settings.quote_ttl_ms, admitted=self.active))
        if quote is not None:  # None: the provider is sold out or unhealthy; let the book forget us
            await self.nc.publish(self.subjects.quote(self.spec.name), encode(quote))

    async def refresh_live(self) -> LiveState:
        """Ask the provider what it offers now and how it is; the agent bids from the answer."""
        want = AllocationRequest(model=next((m for m in self.spec.models if m != "*"), ""),
                                 gpu_model=self.spec.gpu_model, accelerator=self.spec.accelerator,
                                 min_vram_mb=self.spec.vram_mb, region=self.spec.region,
                                 preemptible=self.spec.preemptible)
        try:
            offers = await self.connector.quote(want)
            health = await self.connector.health() if self.connector.supports("health") else None
            live = live_from(offers, health, int(time.time() * 1000))
        except HomeskilletError as exc:
            live = LiveState(healthy=False, detail=exc.message, at_ms=int(time.time() * 1000))
        self.live = live
        self.agent.tell(live)
        return live

    async def _live_loop(self) -> None:
        while True:
            try:
                await self.refresh_live()
            except Exception as exc:
                log.warning("live_refresh_failed", pool=self.spec.name, error=repr(exc))
            await asyncio.sleep(self.settings.live_interval_ms / 1000.0)

    async def _quote_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.quote_interval_ms / 1000.0)
            try:
                await self.publish_quote()
            except Exception as exc:  # keep quoting through a NATS reconnect
                log.warning("quote_publish_failed", pool=self.spec.name, error=repr(exc))

    # --- strikes ---------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        # nats-py runs a subscription's callbacks one at a time: spawn so strikes run concurrently.
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_strike(self, msg: Msg) -> None:
        self._spawn(self._strike(msg))

    async def _strike(self, msg: Msg) -> None:
        try:
            strike = decode_strike(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if msg.reply:
                bad = StrikeFailure(strike_id="", pool=self.spec.name, code="bad_strike", message=str(exc),
                                    retryable=False)
                await self.nc.publish(msg.reply, encode(bad))
            return
        sid = strike.strike_id
        earlier = self.results.get(sid)
        if earlier is not None:  # a redelivery: run once, answer every delivery
            result = await asyncio.shield(earlier)
            if isinstance(result, StrikeOk):
                result = msgspec.structs.replace(result, duplicate=True)
            if msg.reply:
                await self.nc.publish(msg.reply, encode(result))
            return
        fut: asyncio.Future[StrikeResult] = asyncio.get_running_loop().create_future()
        self.results[sid] = fut
        beat = self.heartbeats.start(msg.reply) if msg.reply else None
        try:
            result = await self._run(strike, msg.reply if strike.stream else None)
        finally:
            if beat is not None:
                self.heartbeats.stop(beat)
        if isinstance(result, StrikeFailure) and result.code == "lease_rejected":
            self.results.pop(sid, None)  # nothing ran: a later delivery may try again
        fut.set_result(result)
        labelled(STRIKES, pool=self.spec.name, outcome=result.__struct_config__.tag).inc()
        if msg.reply:
            await self.nc.publish(msg.reply, encode(result))
        if isinstance(result, StrikeOk) and strike.lease_id is None:
            self.agent.tell_soon(Served(result.model))  # after the reply: the record is not on the hot path

    async def _run(self, strike: Strike, stream_to: str | None = None) -> StrikeResult:
        """Run the strike; ``stream_to``: the reply inbox its text pieces go to as they come."""
        pool, sid = self.spec.name, strike.strike_id
        if strike.deadline_ms and time.time() * 1000 > strike.deadline_ms:
            if strike.lease_id is not None:
                self.agent.tell(ReleaseLease(strike_id=sid))  # it will never run: free its award
            return StrikeFailure(strike_id=sid, pool=pool, code="deadline_exceeded",
                                 message="the strike arrived after its deadline", retryable=False)
        lease_id: str | None = None
        if strike.lease_id is not None:  # a Contract Net award: the agent holds the lease
            try:
                lease_id = (await self.agent.call(CommitLease(strike))).lease_id
            except LeaseRejected as exc:
                return StrikeFailure(strike_id=sid, pool=pool, code="lease_rejected", message=exc.message)
        else:  # priced on a standing quote: admit on the loop, tell the agent (no hop on the hot path)
            why = revalidate(self.live.apply(self.spec) if self.live else self.spec, strike)
            if why is None and self.active >= self.spec.capacity + self.spec.queue_limit:
                why = f"{pool}: no free capacity (queue full)"
            if why is not None:
                return StrikeFailure(strike_id=sid, pool=pool, code="lease_rejected", message=why)
            lease_id = None  # the host, not the agent, accounts for it
        if sid in self.cancels:  # cancelled before it started: nothing ran, nothing billed
            if lease_id is not None:
                self.agent.tell(ReleaseLease(lease_id))
            return StrikeCancelled(strike_id=sid, pool=pool, message="cancelled before it started")
        self.active += 1
        f = strike.fragment
        req = InferRequest(strike_id=sid, model=strike.model, prompt=f.prompt, context=f.context,
                           max_tokens=f.max_tokens, temperature=f.temperature, deadline_ms=strike.deadline_ms,
                           tenant=strike.tenant, allocation=strike.allocation)
        t0 = time.perf_counter()
        streamed = _Streamed(self, sid, stream_to, t0) if stream_to else None
        task = asyncio.current_task()
        if task is not None:
            self.running[sid] = task
        try:
            async with self.slots:
                res: InferResult = await (self.connector.infer(req) if streamed is None
                                          else self.connector.stream_result(req, streamed.emit))
        except asyncio.CancelledError:
            if sid not in self.cancels or task is None:
                raise
            task.uncancel()  # our own cancel of this strike, not the host stopping: answer it
            secs = time.perf_counter() - t0
            out = streamed.tokens() if streamed is not None else 0
            return StrikeCancelled(strike_id=sid, pool=pool, message="cancelled mid-run",
                                   billed_usd=self._capped(strike, billed_on_cancel(self.spec, f.prompt_tokens, secs,
                                                                                    out)))
        except Preempted as exc:
            secs = time.perf_counter() - t0
            billed = exc.billed_usd if exc.billed_usd is not None else self.spec.usd_per_hour * secs / 3600.0
            return StrikePreemption(strike_id=sid, pool=pool, message=exc.message,
                                    billed_usd=self._capped(strike, billed))
        except HomeskilletError as exc:
            return StrikeFailure(strike_id=sid, pool=pool, code=exc.code, message=exc.message,
                                 retryable=exc.retryable)
        except Exception as exc:
            log.exception("strike_crashed", pool=pool, strike_id=sid, query_id=strike.query_id)
            return StrikeFailure(strike_id=sid, pool=pool, code="engine_error", message=repr(exc))
        finally:
            self.active -= 1
            self.running.pop(sid, None)
            if lease_id is not None:
                self.agent.tell(ReleaseLease(lease_id))
        elapsed = (time.perf_counter() - t0) * 1000.0
        cost = res.billed_usd
        if cost is None and strike.allocation is not None:
            cost = 0.0  # a reservation's strikes are covered by its hourly bill, settled at release
        if cost is None:
            # Priced from the host's own copy of the live state: the agent's state belongs to its thread.
            priced = self.live.apply(self.spec) if self.live else self.spec
            cost = price_usd(priced, res.prompt_tokens, res.completion_tokens, elapsed / 1000.0)
        cost = self._capped(strike, cost)
        return StrikeOk(strike_id=sid, pool=pool, model=res.model, text=res.text, prompt_tokens=res.prompt_tokens,
                        completion_tokens=res.completion_tokens, cost_usd=cost, latency_ms=elapsed,
                        logprob_mean=res.logprob_mean, ttft_ms=streamed.ttft_ms() if streamed else None)

    def _capped(self, strike: Strike, cost: float) -> float:
        """Never charge above the strike's hold (``max_price_usd``: the worst case the budgets hold,
        0 for a strike on an allocation, which its reservation pays by the hour); what the
        provider billed beyond it is this pool's loss."""
        hold = strike.max_price_usd
        if cost <= hold:
            return cost
        labelled(POOL_LOSS_USD, pool=self.spec.name).inc(cost - hold)
        log.warning("charge_capped_at_hold", pool=self.spec.name, strike_id=strike.strike_id, billed_usd=cost,
                    hold_usd=hold, pool_loss_usd=cost - hold, query_id=strike.query_id)
        return hold

    def cancel(self, strike_id: str) -> bool:
        """Stop a running strike (its reply becomes StrikeCancelled); remembered if it has not
        arrived yet. Returns whether a running strike was stopped."""
        self.cancels[strike_id] = None
        task = self.running.get(strike_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    # --- negotiation and track record ------------------------------------------------------------

    async def _on_cfp(self, msg: Msg) -> None:
        self._spawn(self._cfp(msg))

    async def _cfp(self, msg: Msg) -> None:
        try:
            cfp = decode_agent_msg(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if isinstance(cfp, CallForProposals) and msg.reply:
            answer = await self.agent.call(cfp)
            await self.nc.publish(msg.reply, encode(answer))

    async def _on_agent(self, msg: Msg) -> None:
        self._spawn(self._agent_msg(msg))

    async def _agent_msg(self, msg: Msg) -> None:
        try:
            m = decode_agent_msg(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            if msg.reply:
                await self.nc.publish(msg.reply, encode(ErrorReply(code="bad_request", message=str(exc), status=400)))
            return
        match m:
            case Award():
                try:
                    lease = await self.agent.call(m)
                    reply: Any = lease
                except HomeskilletError as exc:
                    reply = ErrorReply(code=exc.code, message=exc.message, status=exc.status, retryable=True)
                if msg.reply:
                    await self.nc.publish(msg.reply, encode(reply))
            case Rejection():
                log.debug("bid_rejected", pool=self.spec.name, cfp_id=m.cfp_id, reason=m.reason)
            case CancelStrike():
                stopped = self.cancel(m.strike_id)
                # A strike under an award that will not come (its hold was refused) or is stopped:
                # free its lease now rather than at its expiry. A running strike's own end frees it too.
                self.agent.tell(ReleaseLease(strike_id=m.strike_id))
                log.debug("strike_cancel", pool=self.spec.name, strike_id=m.strike_id, stopped=stopped,
                          reason=m.reason)
            case Reserve() | FreeAllocation() | MetricsAsk():
                if msg.reply:
                    await self.nc.publish(msg.reply, encode(await self._allocation_msg(m)))

    async def _allocation_msg(self, m: Reserve | FreeAllocation | MetricsAsk,
                              ) -> Allocated | Freed | MetricsReply | ErrorReply:
        """Reservations: the connector talks to the provider; errors go back as data."""
        try:
            match m:
                case Reserve():
                    alloc = await self.connector.allocate(m.want)
                    log.info("allocated", pool=self.spec.name, reservation_id=m.reservation_id,
                             allocation_id=alloc.allocation_id, tenant=m.tenant)
                    return Allocated(allocation=alloc)
                case FreeAllocation():
                    return Freed(release=await self.connector.release(m.allocation))
                case MetricsAsk():
                    return MetricsReply(metrics=await self.connector.metrics(m.allocation))
        except HomeskilletError as exc:
            return ErrorReply(code=exc.code, message=exc.message, status=exc.status, retryable=exc.retryable)
        except Exception as exc:
            log.exception("allocation_call_crashed", pool=self.spec.name)
            return ErrorReply(code="engine_error", message=f"{self.spec.name}: {exc!r}", status=502, retryable=True)

    async def _on_verdict(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            for verdict in decode_verdicts(msg.data):  # one Verdict, or a pool's Verdicts batch
                self.agent.tell_soon(verdict)
