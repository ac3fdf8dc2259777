"""Supervised pykka actors: a crashed actor is restarted with its state, logged and counted.

An actor here is behaviour; its state is a plain object handed to every incarnation, so a
restart keeps the ledger's holds and a pool's leases. Messages queued behind the crash are
moved to the new incarnation, so no caller on the loop waits forever. A message told while the
restart is under way waits in ``Supervised`` and follows them, in order: a tell never sleeps or
waits for the restart (it is called on the I/O loop). A ``Call`` whose handler raised gets the
exception back; a domain error (``HomeskilletError``) does not crash the actor, anything else
does (let it crash, then restart).

Hot-path tells from the loop (``tell_soon``) are gathered per loop iteration and delivered as one
``Batch``: one thread wake-up and GIL hand-off per iteration instead of one per message. A
``tell`` or ``call`` from the loop delivers the gathered messages first, so each actor still
sees the loop's messages in the order they were sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any, ClassVar

import pykka

from .bridge import Call
from .errors import HomeskilletError
from .telemetry import ACTOR_RESTARTS, get_logger

__all__ = ["Batch", "HsActor", "Supervised", "Supervisor"]

log = get_logger("homeskillet.supervisor")


class Batch:
    """Messages for one actor, handled in order as if told one by one."""

    __slots__ = ("msgs",)

    def __init__(self, msgs: list[Any]) -> None:
        self.msgs = msgs


class HsActor(pykka.ThreadingActor):
    """Base for every Homeskillet actor: subclasses implement ``handle(msg)``."""

    name: ClassVar[str] = "actor"

    def __init__(self, state: Any, handle: Supervised) -> None:
        super().__init__()
        self.state = state
        self._handle = handle
        self.unhandled: list[Any] = []  # the rest of a Batch whose handling crashed

    def handle(self, msg: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Batch):
            for i, m in enumerate(message.msgs):
                try:
                    self._receive(m)
                except BaseException:
                    self.unhandled = message.msgs[i + 1 :]  # the next incarnation gets them first
                    raise
            return None
        return self._receive(message)

    def _receive(self, message: Any) -> Any:
        if isinstance(message, Call):
            try:
                result = self.handle(message.msg)
            except HomeskilletError as exc:
                message.reply.fail(exc)
                return None
            except Exception as exc:
                message.reply.fail(exc)
                raise
            message.reply.ok(result)
            return None
        return self.handle(message)

    def on_failure(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._handle._crashed(self, exc)


class Supervised:
    """A stable handle to an actor whose incarnations come and go."""

    def __init__(self, name: str, actor_cls: type[HsActor], state: Any, *, max_restarts: int = 5,
                 window_s: float = 60.0) -> None:
        self.name, self.actor_cls, self.state = name, actor_cls, state
        self.max_restarts, self.window_s = max_restarts, window_s
        self.restarts: deque[float] = deque()
        self.dead: BaseException | None = None
        self._lock = threading.Lock()  # held for list changes and queue puts only, never for a restart
        self._restarting: list[Any] = []  # told while the actor was down and its restart under way
        self._soon: list[Any] = []  # told with tell_soon, not yet delivered (loop thread only)
        self._soon_thread = 0
        self._stopped = False
        self._ref: pykka.ActorRef[Any] = actor_cls.start(state, self)

    def tell_soon(self, msg: Any) -> None:
        """Tell ``msg`` at the end of this loop iteration, in one Batch with every other message
        told to this actor in the same iteration. Call from the I/O loop only. After ``stop`` the
        message is dropped: a stopped actor handles nothing (a late verdict, say, at shutdown)."""
        if self._stopped:
            return
        if not self._soon:
            self._soon_thread = threading.get_ident()
            asyncio.get_running_loop().call_soon(self._flush_soon)
        self._soon.append(msg)

    def _flush_soon(self) -> None:
        if self._stopped:  # stopped with the flush still scheduled: nothing is left to deliver to
            self._soon.clear()
            return
        if self._soon:
            batch, self._soon = self._soon, []
            self._tell(batch[0] if len(batch) == 1 else Batch(batch))

    def tell(self, msg: Any) -> None:
        if self._soon and threading.get_ident() == self._soon_thread:
            self._flush_soon()  # keep the loop's order: what was told soon goes first
        self._tell(msg)

    def _tell(self, msg: Any) -> None:
        try:
            self._ref.tell(msg)
            return
        except pykka.ActorDeadError:
            pass
        with self._lock:
            if self.dead is not None:
                raise HomeskilletError(f"actor {self.name} is down after repeated crashes: {self.dead!r}")
            if self._stopped:
                raise HomeskilletError(f"actor {self.name} is stopped")
            if self._ref.is_alive():  # the restart finished since the first try
                self._ref.tell(msg)
            else:  # it crashed and its restart is under way (``_crashed``): that delivers this too
                self._restarting.append(msg)

    async def call(self, msg: Any, timeout: float = 10.0) -> Any:
        call, fut = Call.new(msg)
        self.tell(call)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            # Said loudly: a caller on the query path waited the whole timeout for this actor.
            log.error("actor_call_timeout", actor=self.name, message=type(msg).__name__, timeout_s=timeout,
                      alive=self._ref.is_alive(), inbox_empty=self._ref.actor_inbox.empty())
            raise HomeskilletError(f"actor {self.name} did not answer {type(msg).__name__} within {timeout:g}s; "
                                   "try again") from None

    def _crashed(self, actor: HsActor, exc: BaseException) -> None:
        """On the crashed actor's thread: start the next incarnation and hand it, in order, what
        the old one left unhandled, then what was told meanwhile; or give up and fail the calls."""
        pending = list(actor.unhandled)
        while not actor.actor_inbox.empty():
            pending.append(actor.actor_inbox.get().message)
        now = time.monotonic()
        with self._lock:
            self.restarts.append(now)
            while self.restarts and now - self.restarts[0] > self.window_s:
                self.restarts.popleft()
            give_up = len(self.restarts) > self.max_restarts
            ACTOR_RESTARTS.labels(actor=self.name).inc()
            if give_up:
                self.dead = exc
                pending += self._restarting
                self._restarting = []
        if give_up:
            log.critical("actor_gave_up", actor=self.name, error=repr(exc), restarts=len(self.restarts))
            for msg in pending:
                if isinstance(msg, Call):
                    msg.reply.fail(HomeskilletError(f"actor {self.name} is down: {exc!r}"))
            return
        log.error("actor_restarted", actor=self.name, error=repr(exc), moved_messages=len(pending))
        ref = self.actor_cls.start(self.state, self)  # outside the lock: a tell meanwhile only appends
        for msg in pending:
            ref.tell(msg)
        with self._lock:
            # A tell that saw the old incarnation alive may have put its message after the drain
            # above (a thread switch between pykka's alive check and its put): move those too.
            while not actor.actor_inbox.empty():
                ref.tell(actor.actor_inbox.get().message)
            for msg in self._restarting:
                ref.tell(msg)
            self._restarting = []
            self._ref = ref

    def stop(self) -> None:
        if self._soon and threading.get_ident() == self._soon_thread:
            self._flush_soon()  # what the loop told last still reaches the actor before it stops
        self._stopped = True
        if self._ref.is_alive():
            self._ref.stop(block=True, timeout=5)


class Supervisor:
    """Starts and stops the process's actors; one per stateful component, never one per query."""

    def __init__(self) -> None:
        self.children: dict[str, Supervised] = {}

    def start(self, name: str, actor_cls: type[HsActor], state: Any) -> Supervised:
        if name in self.children:
            raise ValueError(f"an actor named {name!r} is already supervised")
        handle = Supervised(name, actor_cls, state)
        self.children[name] = handle
        return handle

    def stop_all(self) -> None:
        for handle in reversed(list(self.children.values())):
            handle.stop()
        self.children.clear()
