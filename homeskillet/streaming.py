"""A streamed answer: the text goes to the client as the strikes produce it, in answer order.

The client's side is a ``TextSink``: it receives pieces whose concatenation is exactly the
Answer's ``text``. An ordered answer of several parts streams part by part: the current part's
chunks go out as they arrive; a later part's chunks wait in its buffer until every part before
it has finished (then they go out at once, and the rest of that part live). The ordered merge's
numbering ("1. question") goes out with a part's first text.

Failover and streaming (the rule, documented in docs/architecture.md): a fragment whose strike
fails may be re-struck elsewhere only while none of its text has reached the client (buffered
text is dropped with ``PartStream.reset``). Once some has, the query ends with
``StreamInterrupted`` rather than sending a second, different answer after the first's start.

``streamed`` turns a gateway call that takes a sink into an async iterator of text pieces ending
with the Answer: what the ingresses (OpenAI SSE, MCP progress, NATS chunks) loop over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from .telemetry import get_logger
from .wire import Answer

__all__ = ["AnswerStream", "PartStream", "TextSink", "streamed"]

log = get_logger("homeskillet.streaming")

TextSink = Callable[[str], None]  # receives the answer's text in order; must not block


class PartStream:
    """One part of the answer on its way to the client (a strike's ``on_chunk`` feeds ``emit``)."""

    __slots__ = ("answer", "buffer", "done", "index", "sent")

    def __init__(self, answer: AnswerStream, index: int) -> None:
        self.answer, self.index = answer, index
        self.buffer: list[str] = []  # received, not yet sent (an earlier part is still running)
        self.sent = ""  # this part's text that reached the client
        self.done = False

    @property
    def delivered(self) -> bool:
        """Whether any of this part's text reached the client (then it must not be re-struck)."""
        return bool(self.sent)

    def emit(self, text: str) -> None:
        if self.done or not text:
            return
        if self.answer.current == self.index:
            self.answer.send_part(self, text)
        else:
            self.buffer.append(text)

    def reset(self) -> None:
        """The strike streaming this part failed before any of it was sent: forget its text."""
        if self.delivered:
            raise RuntimeError("a part whose text reached the client cannot be restarted")
        self.buffer.clear()

    def finish(self, text: str) -> None:
        """The part's whole text: what did not stream (a buffered strategy, a cache hit) goes now."""
        if self.done:
            return
        received = self.sent + "".join(self.buffer)
        if received and not text.startswith(received):
            if self.delivered:
                log.error("stream_diverged", part=self.index, sent=len(self.sent), text=len(text))
            self.buffer = [text[len(self.sent):]] if text.startswith(self.sent) else []
        else:
            self.buffer.append(text[len(received):])
        self.done = True
        self.answer.advance()


class AnswerStream:
    """The whole answer's stream over ``sink``: parts in order, each after its ``prefix``."""

    def __init__(self, sink: TextSink, prefixes: list[str], t0: float | None = None) -> None:
        self.sink = sink
        self.t0 = time.monotonic() if t0 is None else t0
        self.prefixes = prefixes
        self.parts = [PartStream(self, i) for i in range(len(prefixes))]
        self.current = 0
        self.text = ""  # everything sent so far
        self.ttft_ms: float | None = None
        self._prefixed = [False] * len(prefixes)

    def part(self, index: int) -> PartStream:
        return self.parts[index]

    def _send(self, text: str) -> None:
        if not text:
            return
        self.text += text
        self.sink(text)

    def send_part(self, part: PartStream, text: str) -> None:
        if not text:
            return
        if not self._prefixed[part.index]:
            self._prefixed[part.index] = True
            self._send(self.prefixes[part.index])
        if self.ttft_ms is None:
            self.ttft_ms = (time.monotonic() - self.t0) * 1000.0
        part.sent += text
        self._send(text)

    def advance(self) -> None:
        """Send what finished parts hold, in order, up to the first part still running (whose
        buffered text goes out now, the rest of it live)."""
        while self.current < len(self.parts):
            part = self.parts[self.current]
            held, part.buffer = "".join(part.buffer), []
            self.send_part(part, held)
            if not part.done:
                return
            if not self._prefixed[part.index]:  # an empty part still has its heading
                self._prefixed[part.index] = True
                self._send(self.prefixes[part.index])
            self.current += 1

    def close(self, text: str) -> None:
        """The answer's final text: send whatever of it has not gone out (all of it, normally)."""
        if text.startswith(self.text):
            rest = text[len(self.text):]
            if rest and self.ttft_ms is None:
                self.ttft_ms = (time.monotonic() - self.t0) * 1000.0
            self._send(rest)
        else:
            log.error("stream_diverged_from_answer", sent=len(self.text), text=len(text))


async def streamed(ask: Callable[[TextSink], Awaitable[Answer]]) -> AsyncIterator[str | Answer]:
    """Run ``ask`` with a sink; yield its text pieces as they come (pieces that queued up while
    the consumer was busy come joined), then the Answer. A HomeskilletError raises here. Closing
    the iterator early (the client left) cancels the query, and with it its running strikes."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(ask(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        ended = False
        while not ended:
            piece = await queue.get()
            if piece is None:
                break
            pieces = [piece]
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    ended = True
                    break
                pieces.append(more)
            yield "".join(pieces)
        yield await task
    finally:
        if not task.done():
            task.cancel()
