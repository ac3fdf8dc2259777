"""The runtime waits for JetStream before it opens the durable queue and tenant state: a server
without JetStream is a clear start-up error, not a stack trace from the first stream call."""

from __future__ import annotations

import nats
import pytest

from homeskillet.errors import HomeskilletError
from homeskillet.natsd import NatsServer, wait_for_jetstream


async def test_a_runtime_on_nats_without_jetstream_says_so() -> None:
    with NatsServer(jetstream=False) as server:
        nc = await nats.connect(server.url)
        try:
            with pytest.raises(HomeskilletError, match=r"JetStream did not answer within 0\.3s.*-js"):
                await wait_for_jetstream(nc, timeout_s=0.3)
        finally:
            await nc.close()


async def test_the_wait_passes_once_jetstream_answers(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await wait_for_jetstream(nc, timeout_s=5)
    finally:
        await nc.close()
