"""The one seam between pykka actor threads and the asyncio I/O loop.

Loop → actor: ``tell`` a ``Call`` that carries a ``Reply``; the actor answers through
``loop.call_soon_threadsafe``, so the loop never blocks on a pykka future. Actor → loop:
``run_on_loop`` (``asyncio.run_coroutine_threadsafe``). Nothing here imports pykka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

__all__ = ["Call", "Reply", "run_on_loop"]

T = TypeVar("T")


def _resolve(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():  # the caller gave up (timeout, cancelled); nothing to deliver
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


class Reply(Generic[T]):
    """A way back to an asyncio future from any thread; answering twice is harmless."""

    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[T]) -> None:
        self.loop, self.fut = loop, fut

    def ok(self, value: T) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.fut, value, None)

    def fail(self, exc: BaseException) -> None:
        self.loop.call_soon_threadsafe(_resolve, self.fut, None, exc)


class Call:
    """A request to an actor that wants an answer: the message and where the answer goes."""

    __slots__ = ("msg", "reply")

    def __init__(self, msg: object, reply: Reply[Any]) -> None:
        self.msg, self.reply = msg, reply

    @classmethod
    def new(cls, msg: object) -> tuple[Call, asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        return cls(msg, Reply(loop, fut)), fut


def run_on_loop(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> Future[T]:
    """Schedule ``coro`` on the I/O loop from an actor thread; never wait on it from the loop."""
    return asyncio.run_coroutine_threadsafe(coro, loop)
