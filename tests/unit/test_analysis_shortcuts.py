"""Analysis shortcuts agree with the full path: simhash voting (bit-sliced or numpy), question splitting."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from homeskillet.analyze import _majority_bitsliced, _majority_numpy, _questions, _questions_full, fingerprint

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@given(st.lists(u64, min_size=1, max_size=150))
def test_bitsliced_majority_equals_numpy_vote(hashes: list[int]) -> None:
    assert _majority_bitsliced(hashes) == _majority_numpy(np.array(hashes, dtype=np.uint64))


def test_majority_is_strict_more_than_half() -> None:
    assert _majority_bitsliced([0b11, 0b01]) == 0b01  # bit 1 is set in exactly half: not a majority
    assert _majority_bitsliced([0b11, 0b01, 0b10]) == 0b11
    assert _majority_bitsliced([1 << 63]) == 1 << 63


@given(st.text(alphabet=st.sampled_from(["a", "b", "c", " "]), max_size=400))
def test_fingerprint_is_stable_across_the_path_switch(text: str) -> None:
    assert 0 <= fingerprint(text) < 1 << 64
    assert fingerprint(text) == fingerprint(text.upper())


@given(st.text(alphabet=st.sampled_from(["a", " ", "?", "\n", "\r", "1", ".", "-"]), max_size=60))
def test_the_single_question_shortcut_splits_exactly_like_the_full_analysis(prompt: str) -> None:
    assert _questions(prompt, 16) == _questions_full(prompt, 16)


def test_non_latin_share_is_still_counted_once_the_text_is_not_ascii() -> None:
    from homeskillet.analyze import features

    assert features("plain ascii text, with 1 number").non_latin == 0.0
    assert features("привет мир").non_latin == 1.0
    assert features("hello мир").non_latin == 3 / 8
    assert features("café au lait").non_latin == 0.0  # é is Latin-1: Latin script
