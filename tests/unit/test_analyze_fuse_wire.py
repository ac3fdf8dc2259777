import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import homeskillet.wire as wire
from homeskillet.analyze import analyze, fingerprint, fragment_hash
from homeskillet.errors import BadRequest, PayloadTooLarge
from homeskillet.fuse import fuse
from homeskillet.gateway import validate_query
from homeskillet.wire import Covenant, Message, Query, Resources

COV = Covenant(name="c", resources=Resources(model="m"))


def parts(prompt: str) -> list[str]:
    return [f.prompt for f in analyze(Query(query_id="q", prompt=prompt), COV)]


def test_several_questions_become_fragments_in_order():
    assert parts("What is NATS? Why JetStream?") == ["What is NATS?", "Why JetStream?"]
    assert parts("1. Define lease\n2. Define strike\n3. Define verdict") == ["Define lease", "Define strike",
                                                                             "Define verdict"]


def test_a_single_question_or_prose_is_one_fragment():
    assert parts("Explain quantum computing.") == ["Explain quantum computing."]
    prose = "Given this context, what is it? Answer briefly."
    assert parts(prose) == [prose]


def test_messages_keep_their_context_with_every_fragment():
    q = Query(query_id="q", messages=[Message(role="system", content="be brief"),
                                      Message(role="user", content="Who? Why?")])
    frags = analyze(q, COV)
    assert [f.prompt for f in frags] == ["Who?", "Why?"]
    assert all(f.context[0].content == "be brief" for f in frags)


def test_hash_is_exact_identity_and_fingerprint_is_similarity():
    assert fragment_hash("Hello  World", "m") == fragment_hash("hello world", "m")
    assert fragment_hash("hello world", "m") != fragment_hash("hello world", "n")
    a = fingerprint("the quick brown fox jumps over the lazy dog today")
    b = fingerprint("the quick brown fox jumps over the lazy dog tonight")
    c = fingerprint("completely different words about gpu scheduling and costs")
    assert bin(a ^ b).count("1") < bin(a ^ c).count("1")


def test_ordered_fusion():
    frags = analyze(Query(query_id="q", prompt="A? B?"), COV)
    assert fuse("ordered", frags, ["x", "y"]) == "1. A?\nx\n\n2. B?\ny"


def test_validation_rejects_before_any_state_changes():
    with pytest.raises(PayloadTooLarge):
        validate_query(Query(prompt="x" * 11), max_prompt_bytes=10)
    with pytest.raises(BadRequest, match="role 'user'"):
        validate_query(Query(messages=[Message(role="system", content="x")]), max_prompt_bytes=100)


WIRE_TYPES = [getattr(wire, n) for n in wire.__all__ if isinstance(getattr(wire, n), type)
              and issubclass(getattr(wire, n), msgspec.Struct)]


def test_old_peers_ignore_new_fields():
    data = b'{"kind": "query", "v": 2, "prompt": "hi", "field_from_the_future": [1, 2]}'
    assert wire.decode_query(data).prompt == "hi"


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_query_decoder_only_raises_decode_errors(data):
    try:
        wire.decode_query(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass


@given(st.dictionaries(st.sampled_from(["prompt", "tenant", "covenant", "max_tokens", "temperature", "messages"]),
                       st.none() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False)))
def test_query_decoder_on_json_objects(obj):
    try:
        q = wire.decode_query(msgspec.json.encode(obj))
    except msgspec.ValidationError:
        return
    try:
        validate_query(q, max_prompt_bytes=1000)
    except BadRequest:
        pass
