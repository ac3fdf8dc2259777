"""Analysis: a query becomes parts and fragments, through a pipeline of small pure steps.

Three stages, each a pure call:

1. **assess**: features of the text (length, structure, questions, code, math, language,
   reasoning cues) and a 0..1 complexity score from them;
2. **choose_covenant**: a query that names no covenant moves to the template its complexity
   routes to (``[[strategy.route]]`` in the default template);
3. **decompose**: a pipeline of steps, named in the covenant's ``strategy.decompose``, each taking
   and returning an ``Analysis``: ``questions`` splits a multi-question prompt into parts,
   ``long_context`` cuts a part longer than the pools' context window into chunks (mapped, then
   reduced by a model at fusion time).

The pipeline is a plain list, so a step can be tested as a pure call and a deployment can reorder
or replace steps.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from .errors import PayloadTooLarge
from .sims.base import count_tokens, count_words
from .wire import Covenant, Fragment, Message, Query, Route

__all__ = [
    "DECOMPOSERS",
    "DEFAULT_PIPELINE",
    "Analysis",
    "Assessment",
    "Features",
    "Part",
    "analyze",
    "assess",
    "choose_covenant",
    "chunk_prompt",
    "chunk_text",
    "complexity",
    "decompose",
    "features",
    "fingerprint",
    "fragment_hash",
    "fragments_of",
    "make_fragment",
    "split_long_context",
    "split_questions",
]

_WRAP_TOKENS = 16  # the "[part k/n]" wrapper and separators around a chunk


class Features(msgspec.Struct, kw_only=True, frozen=True):
    tokens: int
    paragraphs: int
    list_items: int
    questions: int
    code: float  # 0..1: fenced blocks, or the share of code-like lines
    math: float  # 0..1: formulas, operators between numbers, LaTeX
    non_latin: float  # 0..1: share of letters outside Latin script
    reasoning: float  # 0..1: cues such as "prove", "step by step", "compare"


class Assessment(msgspec.Struct, kw_only=True, frozen=True):
    features: Features
    complexity: float


class Part(msgspec.Struct, kw_only=True):
    """One piece of the query to answer: a question, the whole prompt, or a long text in chunks."""

    text: str
    role: str = "whole"  # whole | question | long
    chunks: list[str] = []  # role "long": the map fragments' texts
    instruction: str = ""  # role "long": what to do with the text (sent with every chunk and the reduce)


class Analysis(msgspec.Struct, kw_only=True):
    query_id: str
    model: str
    max_tokens: int
    temperature: float
    prompt: str  # the part to decompose: the prompt, or the last user message
    context: list[Message]  # everything else, sent with every fragment
    parts: list[Part] = []
    max_fragments: int = 16
    chunk_tokens: int = 0  # prompt budget of one fragment (0: unknown, never chunk)
    max_chunks: int = 64


Step = Callable[[Analysis], Analysis]

# --- assessment ----------------------------------------------------------------------------------

# Every pattern here is linear in the text: a prompt may be up to the 1 MiB limit, on one line,
# without the characters a pattern looks for. No quantified part can be rescanned from many
# starting points (possessive quantifiers, a lookahead that does not backtrack, or plain str
# methods instead of a regex); tests/unit/test_analysis_linear.py holds each to that.
_NUMBERED = re.compile(r"\s*+(?:\d++[.)]|[-*•])\s++(\S.*)")  # match() per line; the item is group 1, rstripped
_CODE_START = re.compile(r"\s*+(?:def |class |import |from \S++ import|#include|fn |func |let |const |var |return\b)")
# ``name(...)`` then ``:`` or ``{``: tried only at the line start and after each ")", the lookahead
# finds a ``name(`` before the next ")", so each stretch between ")"s is read a bounded number of times.
_CALL_THEN_BLOCK = re.compile(r"(?:^|\))(?=[^)]*?\w\()[^)]*+\)\s*+[:{]")
# Matched against the lower-cased text (case-sensitive patterns are 2-3x faster than IGNORECASE)
_MATH = re.compile(r"\d\s*+[-+*/^=<>]\s*+\d|\\(?:frac|sum|int|sqrt)|[∑∫√≤≥≈π]|\b(?:integral|derivative|equation|"
                   r"solve for|theorem)\b")
_REASONING = re.compile(r"\b(?:prove|derive|step by step|explain why|compare|analy[sz]e|design|trade-?offs?|"
                        r"justify|evaluate|optimi[sz]e)\b")
_LETTER = re.compile(r"[^\W\d_]")


def _code_line(line: str) -> bool:
    """A line that looks like code: a keyword opening it, ``;``/``{``/``}`` closing it, an arrow,
    or a call followed by a block (``def f(x):``, ``fn main() {``)."""
    return (line.rstrip()[-1:] in (";", "{", "}") or "=>" in line or _CODE_START.match(line) is not None
            or (")" in line and _CALL_THEN_BLOCK.search(line) is not None))


def _list_item(line: str) -> str | None:
    """The text of a numbered or bulleted line (``1. x``, ``2) x``, ``- x``, ``* x``, ``• x``)."""
    m = _NUMBERED.match(line)
    return m.group(1).rstrip() if m else None


def features(text: str) -> Features:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    letters, non_latin = (0, 0) if text.isascii() else _letters(text)  # ASCII has no letter past U+024F
    code = 1.0 if "```" in text else min(1.0, sum(1 for ln in lines if _code_line(ln)) / 5)
    low = text.lower()
    return Features(
        tokens=count_tokens(text),
        paragraphs=max(1, len([p for p in re.split(r"\n\s*\n", text) if p.strip()])),
        list_items=sum(1 for ln in lines if _NUMBERED.match(ln)),
        questions=text.count("?"),
        code=code,
        math=_found(_MATH, low, 4) / 4,
        non_latin=non_latin / letters if letters else 0.0,
        reasoning=_found(_REASONING, low, 2) / 2,
    )


def _found(pattern: re.Pattern[str], text: str, enough: int) -> int:
    """Matches of ``pattern`` in ``text``, counting no further than ``enough``."""
    return sum(1 for _ in itertools.islice(pattern.finditer(text), enough))


def _letters(text: str) -> tuple[int, int]:
    """(letters, letters past U+024F) of a non-ASCII text."""
    found = _LETTER.findall(text)
    return len(found), sum(1 for c in found if ord(c) > 0x24F)


def complexity(f: Features) -> float:
    """0..1. Weights sum to 1; length saturates near 3,000 tokens, the rest at a few cues each."""
    length = min(1.0, math.log2(1 + f.tokens / 50) / 6)
    structure = min(1.0, (f.list_items + f.paragraphs - 1) / 10)
    questions = min(1.0, max(0, f.questions - 1) / 4)
    language = min(1.0, 2 * f.non_latin)
    score = (0.25 * length + 0.10 * structure + 0.10 * questions + 0.20 * f.code + 0.15 * f.math
             + 0.05 * language + 0.15 * f.reasoning)
    return round(min(1.0, max(0.0, score)), 4)


def assess(query: Query) -> Assessment:
    text = "\n\n".join(m.content for m in query.messages) if query.messages else query.prompt or ""
    f = features(text)
    return Assessment(features=f, complexity=complexity(f))


def choose_covenant(routes: Sequence[Route], score: float) -> str | None:
    """The covenant of the highest route whose threshold the score reaches (None: stay)."""
    chosen = None
    for r in routes:
        if score >= r.min_complexity:
            chosen = r.covenant
    return chosen


# --- decomposition steps -------------------------------------------------------------------------


def split_questions(a: Analysis) -> Analysis:
    """Numbered or bulleted items, or several sentences that each end in '?', are separate."""
    parts = a.parts or [Part(text=a.prompt.strip())]
    out: list[Part] = []
    for part in parts:
        texts = _questions(part.text, a.max_fragments) if part.role == "whole" else []
        if texts:
            out.extend(Part(text=t, role="question") for t in texts)
        else:
            out.append(part)
    return msgspec.structs.replace(a, parts=out)


def _questions(text: str, max_fragments: int) -> list[str]:
    """The separate questions or items of ``text``; empty when it stays whole."""
    if text.count("?") < 2 and len(text.splitlines()) < 2:
        return []  # one line with at most one question (most prompts) cannot split: skip the regexes
    return _questions_full(text, max_fragments)


def _questions_full(text: str, max_fragments: int) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = [item for ln in lines if (item := _list_item(ln)) is not None]
    if len(items) >= 2 and len(items) == len(lines):
        texts = items
    else:  # sentences that each end in "?", and nothing after the last one
        *asked, rest = text.split("?")
        questions = [(q + "?").strip() for q in asked]
        texts = questions if len(questions) >= 2 and not rest.strip() else []
    return texts if 2 <= len(texts) <= max_fragments else []  # more than that: keep the query whole


def chunk_text(text: str, budget: int) -> list[str]:
    """Cut ``text`` into pieces of at most ``budget`` tokens, at paragraph, then sentence, then
    word boundaries (a word longer than the budget, at characters); pieces are packed greedily so
    there are as few as possible. Linear: a chunk's size is kept as counts, never recounted."""
    pieces: list[str] = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not para:
            continue
        if count_tokens(para) <= budget:
            pieces.append(para)
            continue
        for sent in re.split(r"(?<=[.!?])\s+", para):
            if count_tokens(sent) <= budget:
                pieces.append(sent)
                continue
            words = sent.split()
            step = max(1, budget // 2)  # a word is at least one token; long words are more
            for i in range(0, len(words), step):
                piece = " ".join(words[i:i + step])
                if count_tokens(piece) <= budget:
                    pieces.append(piece)
                else:  # at most budget // 2 words, so 4 * budget characters are at most budget tokens
                    pieces.extend(piece[k:k + 4 * budget] for k in range(0, len(piece), 4 * budget))
    chunks: list[list[str]] = []
    words_in = chars_in = 0  # the last chunk's words and characters; pieces joined by "\n\n" add up
    for piece in pieces:
        w, c = count_words(piece), len(piece)
        if chunks and max(words_in + w, (chars_in + 2 + c + 3) // 4) <= budget:
            chunks[-1].append(piece)
            words_in, chars_in = words_in + w, chars_in + 2 + c
        else:
            chunks.append([piece])
            words_in, chars_in = w, c
    return ["\n\n".join(chunk) for chunk in chunks]


def split_long_context(a: Analysis) -> Analysis:
    """A part that does not fit one fragment's budget becomes chunks plus an instruction: the
    last paragraph when it is short (the ask), else nothing (the whole text is the material)."""
    if a.chunk_tokens <= 0:
        return a
    context = sum(count_tokens(m.content) for m in a.context)
    out: list[Part] = []
    for part in a.parts or [Part(text=a.prompt.strip())]:
        if part.role == "long" or count_tokens(part.text) + context <= a.chunk_tokens:
            out.append(part)
            continue
        paras = [p.strip() for p in re.split(r"\n\s*\n", part.text) if p.strip()]
        instruction = ""
        if len(paras) >= 2 and count_tokens(paras[-1]) <= a.chunk_tokens // 4:
            instruction, paras = paras[-1], paras[:-1]
        budget = a.chunk_tokens - context - count_tokens(instruction) - _WRAP_TOKENS
        if budget < 32:
            raise PayloadTooLarge(
                f"the context messages and instruction leave {budget} tokens per chunk of a "
                f"{a.chunk_tokens}-token window; shorten them or raise strategy.map_reduce.chunk_tokens",
                term="strategy.map_reduce.chunk_tokens")
        chunks = chunk_text("\n\n".join(paras), budget)
        if len(chunks) > a.max_chunks:
            raise PayloadTooLarge(
                f"the prompt needs {len(chunks)} chunks of at most {budget} tokens; the covenant allows "
                f"{a.max_chunks} (strategy.map_reduce.max_chunks): shorten the prompt or raise the limit",
                term="strategy.map_reduce.max_chunks")
        out.append(Part(text=part.text, role="long", chunks=chunks, instruction=instruction))
    return msgspec.structs.replace(a, parts=out)


DECOMPOSERS: dict[str, Step] = {"questions": split_questions, "long_context": split_long_context}
DEFAULT_PIPELINE: Sequence[Step] = (split_questions,)

# --- identity ------------------------------------------------------------------------------------


def fragment_hash(content: str, model: str, context: Sequence[Message] = ()) -> str:
    """Exact identity: whitespace- and case-insensitive content, the model, and the context the
    fragment is sent with (the same question under another system prompt is another fragment)."""
    canonical = " ".join(content.split()).lower()
    ctx = "\x01".join(f"{m.role}\x02{m.content}" for m in context)
    return hashlib.sha256(f"{model}\x00{canonical}\x00{ctx}".encode()).hexdigest()


_BITS = np.uint64(1) << np.arange(64, dtype=np.uint64)
_ALL = (1 << 64) - 1
_NUMPY_FROM = 64  # shingles; below this numpy's per-call overhead costs more than the voting itself


def _majority_bitsliced(hashes: list[int]) -> int:
    """The bits set in more than half of ``hashes``, all 64 positions at once: the per-position
    counts are kept bit-sliced (``planes[k]`` holds bit k of every count) and grown by ripple-carry
    addition, then compared with the threshold from the top bit down. No per-bit Python loop."""
    planes: list[int] = []
    for h in hashes:
        carry = h
        for k, p in enumerate(planes):
            planes[k] = p ^ carry
            carry &= p
            if not carry:
                break
        else:
            if carry:
                planes.append(carry)
    need = len(hashes) // 2 + 1  # count * 2 > n  <=>  count >= n // 2 + 1
    greater, equal = 0, _ALL
    for k in range(max(len(planes), need.bit_length()) - 1, -1, -1):
        p = planes[k] if k < len(planes) else 0
        if need >> k & 1:
            equal &= p
        else:
            greater |= equal & p
            equal &= ~p
    return greater | equal


def _majority_numpy(hashes: np.ndarray) -> int:
    """The bits set in more than half of ``hashes`` (uint64): bits unpacked a block at a time, so
    a long prompt's vote needs a few MB, not 64 words per shingle."""
    counts = np.zeros(64, dtype=np.int64)
    for i in range(0, len(hashes), 1 << 16):
        block = hashes[i : i + (1 << 16)].astype("<u8").view(np.uint8).reshape(-1, 8)
        counts += np.unpackbits(block, axis=1, bitorder="little").sum(axis=0, dtype=np.int64)
    return int(_BITS[counts * 2 > len(hashes)].sum())


def fingerprint(content: str) -> int:
    """64-bit simhash over word 3-shingles: near-identical prompts get near-identical sketches.
    One hash per shingle in Python; the bit voting bit-sliced on ints for short prompts (the
    common case, where numpy's call overhead dominated the analysis), in numpy for long ones."""
    words = content.lower().split()
    shingles = [" ".join(words[i : i + 3]) for i in range(max(1, len(words) - 2))] or [""]
    hashes = [int.from_bytes(hashlib.blake2b(sh.encode(), digest_size=8).digest(), "big") for sh in shingles]
    if len(hashes) < _NUMPY_FROM:
        return _majority_bitsliced(hashes)
    return _majority_numpy(np.fromiter(hashes, dtype=np.uint64, count=len(hashes)))


# --- the whole analysis --------------------------------------------------------------------------


def _start(query: Query, cov: Covenant, max_fragments: int, chunk_tokens: int) -> Analysis:
    if query.messages:
        last_user = max(i for i, m in enumerate(query.messages) if m.role == "user")
        prompt = query.messages[last_user].content
        context = [m for i, m in enumerate(query.messages) if i != last_user]
    else:
        prompt, context = query.prompt or "", []
    return Analysis(query_id=query.query_id, model=cov.resources.model, max_tokens=cov.max_tokens,
                    temperature=query.temperature, prompt=prompt, context=context, max_fragments=max_fragments,
                    chunk_tokens=chunk_tokens, max_chunks=cov.strategy.map_reduce.max_chunks)


def decompose(query: Query, cov: Covenant, *, pipeline: Sequence[Step] | None = None, max_fragments: int = 16,
              chunk_tokens: int = 0) -> Analysis:
    """Run the decomposition pipeline (the covenant's ``strategy.decompose`` unless given)."""
    steps = pipeline if pipeline is not None else [DECOMPOSERS[n] for n in cov.strategy.decompose]
    a = _start(query, cov, max_fragments, chunk_tokens)
    for step in steps:
        a = step(a)
    if not a.parts:
        a = msgspec.structs.replace(a, parts=[Part(text=a.prompt.strip())])
    return a


def make_fragment(a: Analysis, fragment_id: str, index: int, part: int, prompt: str, role: str) -> Fragment:
    return Fragment(
        fragment_id=fragment_id, query_id=a.query_id, index=index, prompt=prompt, context=a.context,
        model=a.model, hash=fragment_hash(prompt, a.model, a.context), fingerprint=fingerprint(prompt),
        prompt_tokens=count_tokens(prompt) + sum(count_tokens(m.content) for m in a.context),
        max_tokens=a.max_tokens, temperature=a.temperature, role=role, part=part,
    )


def chunk_prompt(part: Part, k: int) -> str:
    head = f"[part {k + 1}/{len(part.chunks)}]\n{part.chunks[k]}"
    return f"{part.instruction}\n\n{head}" if part.instruction else head


def fragments_of(a: Analysis) -> list[list[Fragment]]:
    """Per part, the fragments to strike: one, or one per chunk of a long part."""
    out: list[list[Fragment]] = []
    n = 0
    for i, part in enumerate(a.parts):
        if part.role == "long":
            frags = [make_fragment(a, f"{a.query_id}.{i}.m{k}", n + k, i, chunk_prompt(part, k), "chunk")
                     for k in range(len(part.chunks))]
        else:
            frags = [make_fragment(a, f"{a.query_id}.{i}", n, i, part.text, part.role)]
        n += len(frags)
        out.append(frags)
    return out


def analyze(query: Query, cov: Covenant, *, pipeline: Sequence[Step] | None = None, max_fragments: int = 16,
            chunk_tokens: int = 0) -> list[Fragment]:
    """The query's fragments under ``cov``, flat and in order (the query must already be validated)."""
    a = decompose(query, cov, pipeline=pipeline, max_fragments=max_fragments, chunk_tokens=chunk_tokens)
    return [f for frags in fragments_of(a) for f in frags]
