"""Pure parts of streaming: the answer stream's ordering and failover rule, and the wire's evolution
(an old peer and a new one still talk)."""

from __future__ import annotations

import msgspec
import pytest

from homeskillet.fuse import Piece, ordered_merge
from homeskillet.strategies.serving import _prefixes
from homeskillet.streaming import AnswerStream
from homeskillet.wire import (
    AnswerChunk,
    StrikeChunk,
    StrikeOk,
    decode_answer_stream,
    decode_strike_reply,
    decode_strike_result,
    encode,
)


def stream_of(prompts: list[str]) -> tuple[AnswerStream, list[str]]:
    sent: list[str] = []
    return AnswerStream(sent.append, _prefixes(prompts), t0=0.0), sent


def test_parts_stream_in_order_and_join_to_the_ordered_merge() -> None:
    out, sent = stream_of(["Q1?", "Q2?", "Q3?"])
    one, two, three = out.parts
    three.emit("C")  # a later part's text waits
    two.emit("B")
    assert sent == []
    one.emit("A")
    assert "".join(sent) == "1. Q1?\nA" and out.ttft_ms is not None
    three.finish("C!")  # finished out of order: still waits behind part 2
    one.finish("A.")
    assert "".join(sent) == "1. Q1?\nA.\n\n2. Q2?\nB"  # part 2's buffer goes out once part 1 is done
    two.emit("b")  # and the rest of part 2 live
    two.finish("Bb")
    pieces = [Piece(fragment_id=str(i), prompt=q, text=t) for i, (q, t) in enumerate([("Q1?", "A."), ("Q2?", "Bb"),
                                                                                       ("Q3?", "C!")])]
    assert "".join(sent) == ordered_merge(pieces).text
    out.close(ordered_merge(pieces).text)
    assert "".join(sent) == ordered_merge(pieces).text  # nothing sent twice


def test_a_lone_part_has_no_heading_and_a_whole_text_comes_at_once() -> None:
    out, sent = stream_of(["Q?"])
    out.parts[0].finish("the whole answer")  # a buffered strategy, or a cache hit
    out.close("the whole answer")
    assert sent == ["the whole answer"]


def test_reset_drops_only_text_that_never_reached_the_client() -> None:
    out, sent = stream_of(["Q1?", "Q2?"])
    one, two = out.parts
    two.emit("wrong start")
    assert not two.delivered
    two.reset()  # the strike failed; the next pool starts over
    two.emit("right")
    one.emit("A")
    assert one.delivered
    with pytest.raises(RuntimeError):
        one.reset()
    one.finish("A")
    two.finish("right")
    assert "".join(sent) == "1. Q1?\nA\n\n2. Q2?\nright"


def test_a_final_text_that_differs_from_the_buffered_one_replaces_it() -> None:
    out, sent = stream_of(["Q1?", "Q2?"])
    out.parts[1].emit("draft")
    out.parts[1].finish("final")  # the part's served text is the authority
    out.parts[0].finish("A")
    assert "".join(sent) == "1. Q1?\nA\n\n2. Q2?\nfinal"


class StrikeV1(msgspec.Struct, kw_only=True, tag_field="kind", tag="strike"):
    """Strike as a wire-version-1 peer knows it (no ``stream``)."""

    v: int = 1
    strike_id: str
    pool: str


def test_an_old_host_reads_a_streamed_strike_and_new_peers_read_old_results() -> None:
    new = b'{"kind":"strike","v":2,"strike_id":"s","pool":"p","stream":true,"query_id":"q"}'
    old = msgspec.json.decode(new, type=StrikeV1)
    assert old.strike_id == "s"  # the unknown field is ignored: the old host runs it, unstreamed
    ok = b'{"kind":"strike_ok","v":1,"strike_id":"s","pool":"p","model":"m","text":"t","prompt_tokens":1,' \
         b'"completion_tokens":1,"cost_usd":0.0,"latency_ms":1.0}'
    reply = decode_strike_reply(ok)
    assert isinstance(reply, StrikeOk) and reply.ttft_ms is None


def test_chunks_are_opt_in_because_an_old_dispatcher_cannot_read_them() -> None:
    chunk = encode(StrikeChunk(strike_id="s", pool="p", offset=0, text="hi"))
    assert isinstance(decode_strike_reply(chunk), StrikeChunk)
    with pytest.raises(msgspec.ValidationError):
        decode_strike_result(chunk)  # what a version-1 dispatcher decodes with


def test_answer_stream_messages_decode_by_kind() -> None:
    msg = decode_answer_stream(encode(AnswerChunk(query_id="q", offset=3, text="abc")))
    assert msg == AnswerChunk(query_id="q", offset=3, text="abc")
