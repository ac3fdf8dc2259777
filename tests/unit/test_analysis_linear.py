"""Analysis is linear in the prompt: the patterns that replaced backtracking regexes say the same
as the old ones on small texts, and every prompt shape of issue #10 analyses at a size where a
quadratic pattern would take minutes (the pytest timeout is the bound, not a speed assertion)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from homeskillet.analyze import (
    _CODE_START,
    _code_line,
    _list_item,
    _questions_full,
    analyze,
    features,
    fingerprint,
)
from homeskillet.covenant import CovenantBook
from homeskillet.sims.base import count_tokens
from homeskillet.wire import Query

# The patterns as they were (quadratic on some inputs): the reference the linear ones must equal.
OLD_CODE_LINE = re.compile(r"^\s*(?:def |class |import |from \S+ import|#include|fn |func |let |const |var |return\b)|"
                           r"[;{}]\s*$|=>|\w+\([^)]*\)\s*[:{]")
OLD_NUMBERED = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+(.+?)\s*$")
OLD_QUESTION = re.compile(r"[^?]*\?")
OLD_WORD = re.compile(r"\S+")

code_chars = st.lists(st.sampled_from([*"ab_1 \t(){};:=>#.-*•?é", "def ", "from ", " import", "return", "fn "]),
                      max_size=30).map("".join)


@given(code_chars)
@settings(max_examples=200)
def test_code_line_says_what_the_old_regex_said(line: str) -> None:
    assert _code_line(line) == bool(OLD_CODE_LINE.search(line))


@given(code_chars)
@settings(max_examples=200)
def test_list_items_are_what_the_old_regex_found(line: str) -> None:
    old = OLD_NUMBERED.match(line)
    new = _list_item(line)
    if old is not None and old.group(1).strip():
        assert new == old.group(1)
    else:  # the old pattern also took a bullet followed by nothing but whitespace; that is no item
        assert new is None or not old


@given(st.lists(st.sampled_from(["a", " ", "?", "\n", "1.", "- ", "b?"]), max_size=40).map("".join))
def test_questions_split_as_the_old_regex_did(text: str) -> None:
    if not all(OLD_NUMBERED.match(ln) is None or OLD_NUMBERED.match(ln).group(1).strip()  # type: ignore[union-attr]
               for ln in text.splitlines() if ln.strip()):
        return  # a whitespace-only bullet: the case the old pattern got wrong
    questions = [q.strip() for q in OLD_QUESTION.findall(text) if q.strip()]
    rest = OLD_QUESTION.sub("", text).strip()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := OLD_NUMBERED.match(ln))]
    expected = items if len(items) >= 2 and len(items) == len(lines) else (
        questions if len(questions) >= 2 and not rest else [])
    expected = expected if 2 <= len(expected) <= 16 else []
    assert _questions_full(text, 16) == expected


@given(st.text(alphabet=st.sampled_from([" ", "\t", "\n", "\x0b", "\x1c", "a", ".", "\x85", "\u2003", "é"]),
               max_size=40))
def test_token_count_is_the_word_count_it_was(text: str) -> None:
    assert count_tokens(text) == max(len(OLD_WORD.findall(text)), (len(text) + 3) // 4)


def test_code_keywords_open_a_line_only() -> None:
    assert _CODE_START.match("   def f") and not _CODE_START.match("x def f")


SIZE = 256 * 1024  # a quadratic pattern needs minutes here; a linear one well under a second

SHAPES = {
    "one line of words": ("word " * SIZE)[:SIZE],
    "one word": "a" * SIZE,
    "many lines": ("a line of text here\n" * SIZE)[:SIZE],
    "many questions": ("why? " * SIZE)[:SIZE],
    "questions, then none": "why? " * 10 + "a" * SIZE,
    "code lines": ("x = foo(a, b);\n" * SIZE)[:SIZE],
    "open calls": ("f(" * SIZE)[:SIZE],
    "calls then blocks": ("f(x) :" * SIZE)[:SIZE],
    "whitespace": "- a" + " " * SIZE + "b",
    "bullets": ("- item   \n" * SIZE)[:SIZE],
    "digits and spaces": ("1 " + " " * 50) * (SIZE // 52),
    "non-latin": ("漢字かな交じり文 " * SIZE)[:SIZE // 3],
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_every_shape_analyses_in_linear_time(shape: str) -> None:
    text = SHAPES[shape]
    cov = CovenantBook.load(None).get("auto")
    f = features(text)
    assert f.tokens == count_tokens(text)
    _questions_full(text, 16)
    fingerprint(text)
    frags = analyze(Query(prompt=text, tenant="t"), cov, chunk_tokens=8192)
    assert "".join(fr.prompt for fr in frags)
