"""The fragment result cache: exact by hash, semantic by embedding similarity, per tenant.

- **Exact**: the fragment's ``hash`` (content, model and context) under the tenant and covenant.
- **Semantic**: cosine similarity of embeddings (numpy) among entries of the same tenant, covenant
  and context; a hit needs ``similarity ≥ threshold`` *and* the same numbers and proper names
  (a guard: "7B" and "70B", "Austria" and "Australia" embed close but answer differently).
  The default embedding is a hashing embedding (no model, no download); any function from texts
  to row vectors can be plugged in (``Embedder``).
- **Per tenant**: the tenant is part of every key; no lookup ever sees another tenant's entries.
- **TTL** per entry (the covenant's ``cache.ttl_s``), **bounded** by an LRU over all entries.
- Hits and misses are counted in ``hs_cache_lookups_total{mode, result}``.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import msgspec
import numpy as np

from .bounded import track
from .telemetry import CACHE_LOOKUPS
from .wire import CachePolicy, Fragment, FragmentOutcome

__all__ = ["DEFAULT_THRESHOLD", "CacheHit", "Embedder", "HashingEmbedder", "Probe", "ResultCache", "key_terms",
           "make_cache"]

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> (n, d) rows, L2-normalised
DEFAULT_THRESHOLD = 0.85  # for an embedder that states no calibrated threshold of its own

_WORD = re.compile(r"[\w']+")
_STOP = frozenset(
    "a an the is are was were be been do does did i you we my me your it its of in on at to for with by from "
    "and or how what what's which who who's whom why when where can could should would will shall there this "
    "that these those as into onto about please tell give show explain describe way way's".split()
)


class HashingEmbedder:
    """Feature hashing of content words, word bigrams and character 4-grams into ``dim`` signed
    buckets, sublinear term frequency, L2-normalised. Deterministic, no training, no download;
    it captures shared wording, not synonyms."""

    # Calibrated on tests/fixtures/paraphrases.json: the lowest threshold with no false hit on
    # the distinct questions (hit rate there 0.61; see docs/benchmarks.md).
    threshold = 0.73

    def __init__(self, dim: int = 2048) -> None:
        self.dim = dim

    def _features(self, text: str) -> list[tuple[str, float]]:
        words = [w.strip("'").removesuffix("'s") for w in _WORD.findall(text.casefold())]
        content = [w for w in words if w and w not in _STOP]
        feats: list[tuple[str, float]] = [(f"w:{w}", 1.0) for w in content]
        feats += [(f"b:{a} {b}", 0.5) for a, b in itertools.pairwise(content)]
        for w in content:
            padded = f"<{w}>"
            feats += [(f"c:{padded[i:i + 4]}", 0.25) for i in range(max(1, len(padded) - 3))]
        return feats

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            acc: dict[int, float] = {}
            for feat, weight in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), digest_size=8).digest(), "little")
                idx, sign = h % self.dim, 1.0 if (h >> 63) & 1 else -1.0
                acc[idx] = acc.get(idx, 0.0) + sign * weight
            for idx, v in acc.items():
                out[row, idx] = np.sign(v) * (1.0 + np.log(abs(v))) if abs(v) >= 1.0 else v
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


def key_terms(text: str) -> frozenset[str]:
    """Numbers and proper names (capitalised words not opening a sentence; acronyms such as GPU
    or CSS are vocabulary, not names), case-folded: a semantic hit needs both texts to share all
    of them."""
    terms = set()
    for sentence in re.split(r"(?<=[.!?:;])\s+", text.strip()):
        words = _WORD.findall(sentence)
        for i, w in enumerate(words):
            w = w.removesuffix("'s")
            digit = any(c.isdigit() for c in w)
            name = i > 0 and w[:1].isupper() and not w.isupper() and w.casefold() not in _STOP
            if digit or name:
                terms.add(w.casefold())
    return frozenset(terms)


def _mentions(terms: frozenset[str], text: str) -> bool:
    words = {w.casefold().removesuffix("'s") for w in _WORD.findall(text)}
    return terms <= words


class CacheHit(msgspec.Struct, kw_only=True):
    kind: str  # "exact" | "semantic"
    text: str
    source: FragmentOutcome  # the outcome of the strike that produced the text
    similarity: float = 1.0
    prompt: str = ""  # the cached fragment's prompt (a semantic hit's neighbour)


class Probe(msgspec.Struct, frozen=True):
    """What a semantic lookup and store need of a fragment: its embedding and key terms. Computed
    by ``ResultCache.probe``, a pure call, so a long prompt's can be made off the I/O loop."""

    vector: np.ndarray
    terms: frozenset[str]


class _Entry:
    __slots__ = ("expires", "hash", "ns", "outcome", "prompt", "row", "terms", "text")

    def __init__(self, ns: tuple[str, str, str], frag: Fragment, text: str, outcome: FragmentOutcome,
                 expires: float, terms: frozenset[str] | None = None) -> None:
        self.ns, self.hash, self.prompt = ns, frag.hash, frag.prompt
        self.text, self.outcome, self.expires = text, outcome, expires
        self.terms = key_terms(frag.prompt) if terms is None else terms
        self.row = -1  # its row in the namespace's _Index; -1: not in the semantic index


class _Index:
    """One namespace's embeddings as the rows of one matrix, so a lookup is one matrix-vector
    product, and a put or a drop writes one row: each vector is stored once (a 2048-d float32 row
    is 8 KiB, most of a semantic entry's cost) and nothing is rebuilt per query. The matrix grows
    by doubling and halves when a quarter full; a dropped row is filled with the last one."""

    __slots__ = ("entries", "matrix")

    def __init__(self, dim: int) -> None:
        self.entries: list[_Entry] = []
        self.matrix = np.zeros((8, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: _Entry, vector: np.ndarray) -> None:
        n = len(self.entries)
        if n == len(self.matrix):
            grown = np.zeros((2 * n, self.matrix.shape[1]), dtype=np.float32)
            grown[:n] = self.matrix
            self.matrix = grown
        self.matrix[n] = vector
        entry.row = n
        self.entries.append(entry)

    def remove(self, entry: _Entry) -> None:
        i, last = entry.row, self.entries.pop()
        entry.row = -1
        if last is not entry:
            n = len(self.entries)
            self.matrix[i] = self.matrix[n]
            self.entries[i], last.row = last, i
        if len(self.matrix) > 8 and len(self.entries) <= len(self.matrix) // 4:
            self.matrix = self.matrix[: len(self.matrix) // 2].copy()

    def scores(self, query: np.ndarray) -> np.ndarray:
        sims: np.ndarray = self.matrix[: len(self.entries)] @ query
        return sims


class ResultCache:
    """Fragment results by (tenant, covenant, hash), with a semantic index per (tenant, covenant,
    context). Lives on the I/O loop: no locks, no awaits."""

    def __init__(self, *, max_entries: int = 4096, embed: Embedder | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be ≥ 1, got {max_entries}")
        self.max_entries = max_entries
        self.embed: Embedder = embed or HashingEmbedder()
        self.threshold = float(getattr(self.embed, "threshold", DEFAULT_THRESHOLD))
        self.clock = clock
        self._lru: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()  # (tenant, covenant, hash)
        self._by_ns: dict[tuple[str, str, str], _Index] = {}  # the semantic index of each namespace
        self.evicted = 0  # entries dropped for room (not for age)
        track("result_cache", self)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def cap(self) -> int:
        return self.max_entries

    @staticmethod
    def _ns(tenant: str, covenant_id: str, frag: Fragment) -> tuple[str, str, str]:
        ctx = hashlib.sha256("\x01".join(f"{m.role}\x02{m.content}" for m in frag.context).encode()).hexdigest()
        return tenant, covenant_id, f"{frag.model}\x00{ctx}"

    def probe(self, frag: Fragment, policy: CachePolicy) -> Probe | None:
        """``frag``'s embedding and key terms under a semantic ``policy`` (None otherwise). Pure:
        safe off the I/O loop; ``get`` and ``put`` take it instead of computing them again."""
        if policy.mode != "semantic":
            return None
        return Probe(self.embed([frag.prompt])[0], key_terms(frag.prompt))

    def get(self, tenant: str, covenant_id: str, frag: Fragment, policy: CachePolicy,
            probe: Probe | None = None) -> CacheHit | None:
        if policy.mode == "off":
            return None
        now = self.clock()
        key = (tenant, covenant_id, frag.hash)
        entry = self._lru.get(key)
        if entry is not None and entry.expires <= now:
            self._drop(key)
            entry = None
        if entry is not None:
            self._lru.move_to_end(key)
            CACHE_LOOKUPS.labels(mode=policy.mode, result="exact").inc()
            return CacheHit(kind="exact", text=entry.text, source=entry.outcome, prompt=entry.prompt)
        if policy.mode == "semantic":
            threshold = policy.threshold if policy.threshold is not None else self.threshold
            hit = self._nearest(self._ns(tenant, covenant_id, frag), frag, threshold, now, probe)
            if hit is not None:
                CACHE_LOOKUPS.labels(mode=policy.mode, result="semantic").inc()
                return hit
        CACHE_LOOKUPS.labels(mode=policy.mode, result="miss").inc()
        return None

    def _nearest(self, ns: tuple[str, str, str], frag: Fragment, threshold: float, now: float,
                 probe: Probe | None) -> CacheHit | None:
        index = self._by_ns.get(ns)
        if not index:
            return None
        if probe is None:
            probe = Probe(self.embed([frag.prompt])[0], key_terms(frag.prompt))
        sims = index.scores(probe.vector)
        terms = probe.terms
        for i in np.argsort(-sims):
            if sims[i] < threshold:
                break
            e = index.entries[i]
            if e.expires <= now:
                continue
            if _mentions(terms, e.prompt) and _mentions(e.terms, frag.prompt):
                self._lru.move_to_end((ns[0], ns[1], e.hash))
                return CacheHit(kind="semantic", text=e.text, source=e.outcome, similarity=float(sims[i]),
                                prompt=e.prompt)
        return None

    def put(self, tenant: str, covenant_id: str, frag: Fragment, text: str, outcome: FragmentOutcome,
            policy: CachePolicy, probe: Probe | None = None) -> None:
        if policy.mode == "off":
            return
        key = (tenant, covenant_id, frag.hash)
        if key in self._lru:
            self._drop(key)
        ns = self._ns(tenant, covenant_id, frag)
        if probe is None and policy.mode == "semantic":
            probe = self.probe(frag, policy)
        entry = _Entry(ns, frag, text, outcome, self.clock() + policy.ttl_s,
                       probe.terms if probe is not None else None)
        self._lru[key] = entry
        if probe is not None:
            vector = probe.vector
            index = self._by_ns.get(ns)
            if index is None:
                index = self._by_ns[ns] = _Index(len(vector))
            index.add(entry, vector)
        while len(self._lru) > self.max_entries:
            self._drop(next(iter(self._lru)))
            self.evicted += 1

    def _drop(self, key: tuple[str, str, str]) -> None:
        entry = self._lru.pop(key)
        if entry.row >= 0:
            index = self._by_ns[entry.ns]
            index.remove(entry)
            if not index:
                del self._by_ns[entry.ns]


def make_cache(embedder: str = "hashing", max_entries: int = 4096) -> ResultCache:
    """The cache a deployment configures by name: ``hashing`` (default) or ``minilm`` (the
    optional numpy MiniLM, homeskillet/embeddings.py)."""
    if embedder == "hashing":
        return ResultCache(max_entries=max_entries)
    if embedder == "minilm":
        from .embeddings import MiniLMEmbedder

        return ResultCache(max_entries=max_entries, embed=MiniLMEmbedder())
    raise ValueError(f"unknown cache embedder {embedder!r}; use 'hashing' or 'minilm'")
