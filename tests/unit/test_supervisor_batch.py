"""tell_soon: one Batch per loop iteration, the loop's order kept, and a crash mid-batch loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from homeskillet.supervisor import HsActor, Supervisor


class Seen:
    def __init__(self) -> None:
        self.msgs: list[Any] = []
        self.deliveries = 0  # messages as pykka delivered them: a Batch counts once


class Recorder(HsActor):
    name = "recorder"

    def on_receive(self, message: Any) -> Any:
        self.state.deliveries += 1  # what pykka delivers: a Batch counts once
        return super().on_receive(message)

    def handle(self, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("boom")
        if msg == "?":
            return list(self.state.msgs)
        self.state.msgs.append(msg)
        return None


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    sup = Supervisor()
    yield sup
    sup.stop_all()


async def test_messages_told_soon_in_one_iteration_arrive_as_one_batch_in_order(supervisor: Supervisor) -> None:
    state = Seen()
    actor = supervisor.start("rec", Recorder, state)
    for i in range(5):
        actor.tell_soon(i)
    assert state.msgs == []  # nothing delivered before the iteration ends
    await asyncio.sleep(0)
    assert await actor.call("?") == [0, 1, 2, 3, 4]
    assert state.deliveries == 2  # one Batch, then the call


async def test_a_tell_or_call_delivers_what_was_told_soon_first(supervisor: Supervisor) -> None:
    state = Seen()
    actor = supervisor.start("rec", Recorder, state)
    actor.tell_soon("a")
    actor.tell("b")  # same iteration: "a" must still come first
    actor.tell_soon("c")
    assert await actor.call("?") == ["a", "b", "c"]


async def test_a_crash_inside_a_batch_hands_the_rest_to_the_next_incarnation(supervisor: Supervisor) -> None:
    state = Seen()
    actor = supervisor.start("rec", Recorder, state)
    for m in ("x", "boom", "y", "z"):
        actor.tell_soon(m)
    await asyncio.sleep(0)
    got = await actor.call("?")
    assert got == ["x", "y", "z"]
    assert len(actor.restarts) == 1


async def test_stop_delivers_what_was_told_soon_and_later_tells_are_dropped_quietly() -> None:
    sup = Supervisor()
    state = Seen()
    actor = sup.start("rec", Recorder, state)
    actor.tell_soon("last words")
    sup.stop_all()  # same iteration: the pending batch goes first
    assert state.msgs == ["last words"]
    actor.tell_soon("too late")  # no error, no half-second retry loop on the event loop
    await asyncio.sleep(0)
    assert state.msgs == ["last words"]


class Gated:
    """State whose next incarnation waits on ``gate`` while it starts: a restart held open."""

    def __init__(self) -> None:
        import threading

        self.msgs: list[Any] = []
        self.incarnations = 0
        self.restarting = threading.Event()
        self.gate = threading.Event()


class SlowRestart(HsActor):
    name = "slow"

    def __init__(self, state: Gated, handle: Any) -> None:
        super().__init__(state, handle)
        state.incarnations += 1
        if state.incarnations > 1:  # runs on the crashed actor's thread, inside the supervisor's restart
            state.restarting.set()
            state.gate.wait(10)

    def handle(self, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("boom")
        if msg == "?":
            return list(self.state.msgs)
        self.state.msgs.append(msg)
        return None


async def test_a_tell_during_a_restart_never_blocks_the_loop_and_keeps_its_order(supervisor: Supervisor) -> None:
    state = Gated()
    actor = supervisor.start("slow", SlowRestart, state)
    actor.tell("before")
    actor.tell("boom")
    assert await asyncio.to_thread(state.restarting.wait, 10)  # down, its restart held open
    actor.tell("during-1")  # returns at once: it waits in the handle, not on the loop
    actor.tell_soon("during-2")
    answer = asyncio.ensure_future(actor.call("?"))  # told after during-2 (a call delivers the soon ones first)
    await asyncio.sleep(0)  # the loop turns and tells both while the restart is still held
    assert not state.gate.is_set() and not answer.done()
    state.gate.set()
    assert await answer == ["before", "during-1", "during-2"]
    assert state.incarnations == 2


async def test_a_call_that_times_out_says_which_actor_and_message(supervisor: Supervisor) -> None:
    from homeskillet.errors import HomeskilletError

    state = Gated()
    actor = supervisor.start("slow", SlowRestart, state)
    actor.tell("boom")
    assert await asyncio.to_thread(state.restarting.wait, 10)  # held down: nothing answers
    with pytest.raises(HomeskilletError, match=r"actor slow did not answer str within 0.05s"):
        await actor.call("?", timeout=0.05)
    state.gate.set()
    assert await actor.call("?") == []
