"""Streaming from ``homeskillet node``: the official ``ollama`` client gets the first chunk while the
node's engine is still generating, and so does a Homeskillet client whose query a pool struck on
that node (the ollama connector's NDJSON stream, through the strike path). The engine here is a
generator held on an event after its first piece, so both are shown by ordering, not by timing."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import ollama

from homeskillet.config import PoolSpec
from homeskillet.node import create_node_app
from homeskillet.streaming import streamed
from homeskillet.testing import serve_asgi, start_runtime
from homeskillet.wire import Answer, Query

WORDS = ["Paris ", "is ", "the ", "capital."]


class HeldGenerator:
    """Yields its first piece, then waits for ``release`` (set by the test) before the rest."""

    name = "held"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()

    def stream(self, prompt: str, max_tokens: int, temperature: float) -> Iterator[str]:
        yield WORDS[0]
        assert self.release.wait(30), "the test never released the generator"
        yield from WORDS[1:max_tokens]
        self.finished.set()

    def count_tokens(self, text: str) -> int:
        return len(text.split())


async def test_ollama_client_gets_the_first_chunk_before_generation_ends() -> None:
    gen = HeldGenerator()
    with serve_asgi(create_node_app(gen, ["held"]), "/api/version") as url:
        client = ollama.AsyncClient(host=url)
        pieces: list[tuple[str, bool]] = []
        async for part in await client.generate(model="held", prompt="capital of France?", stream=True):
            if part.response:
                pieces.append((part.response, gen.finished.is_set()))
                gen.release.set()
            last = part
    assert pieces[0] == ("Paris ", False)  # the first chunk came while the engine was still generating
    assert "".join(p for p, _ in pieces) == "".join(WORDS) and last.done


async def test_query_struck_on_an_ollama_node_streams_to_the_client(nats_url: str) -> None:
    gen = HeldGenerator()
    with serve_asgi(create_node_app(gen, ["held"]), "/api/version") as url:
        spec = PoolSpec(name="ollama/node1", provider="ollama", pool_class="local", models=["held"],
                        accelerator="cpu", options={"base_url": url})
        async with start_runtime(nats_url, [spec]) as rt:
            assert rt.gateway is not None
            gateway = rt.gateway
            query = Query(prompt="capital of France?", covenant="smollm2-135m",
                          overrides={"resources": {"model": "held"}})
            seen: list[tuple[str, bool, int]] = []
            async for item in streamed(lambda sink: gateway.ask(query, stream=sink)):
                if isinstance(item, Answer):
                    answer = item
                    break
                seen.append((item, gen.finished.is_set(), rt.hosts["ollama/node1"].active))
                gen.release.set()
    assert seen[0] == ("Paris ", False, 1)  # first text at the client; the strike still running on the node
    assert "".join(s for s, _, _ in seen) == answer.text == "".join(WORDS)
    assert answer.fragments[0].pool == "ollama/node1" and answer.ttft_ms is not None
