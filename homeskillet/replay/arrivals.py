"""Arrivals: when queries come and what they are, as numpy columns, seeded and repeatable.

The stream is generated in fixed one-second chunks from one seeded generator, so whoever reads it
(the live driver in small steps, the virtual-time simulation a tick at a time) sees exactly the
same queries for the same scenario and seed. Time-varying rates (a diurnal swing, bursts) are
drawn by thinning: candidates at the peak rate, each kept with probability rate(t) / peak, which
is exact for any rate function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec
import numpy as np

from .scenario import Scenario, ScenarioError

__all__ = ["ArrivalStream", "Batch", "CohortTable"]

_CHUNK_S = 1.0
_DAY_S = 86_400.0
_PEAK_PHASE = 2 * math.pi * 14 / 24 - math.pi / 2  # the diurnal swing peaks at 14:00


@dataclass(frozen=True)
class Batch:
    """Queries arriving in a time window, one row each."""

    t: np.ndarray  # seconds since the start, float64, sorted
    cls: np.ndarray  # class index, int32
    tpl: np.ndarray  # template index within the class, int32
    tenant: np.ndarray  # tenant index within the class, int32
    questions: np.ndarray  # questions in the query (= fragments), int32

    def __len__(self) -> int:
        return len(self.t)

    @staticmethod
    def empty() -> Batch:
        z = np.zeros(0, dtype=np.int32)
        return Batch(np.zeros(0), z, z, z, z)

    @staticmethod
    def concat(parts: list[Batch]) -> Batch:
        if not parts:
            return Batch.empty()
        return Batch(*(np.concatenate([getattr(b, f) for b in parts]) for f in ("t", "cls", "tpl", "tenant",
                                                                                 "questions")))

    def slice(self, sel: slice | np.ndarray) -> Batch:
        return Batch(self.t[sel], self.cls[sel], self.tpl[sel], self.tenant[sel], self.questions[sel])


class CohortTable:
    """Queries of one class, template and question count are alike to every decision Homeskillet
    makes (same covenant, same sizes), so they are decided together: one cohort id each."""

    def __init__(self, scenario: Scenario) -> None:
        self.keys: list[tuple[int, int, int]] = []
        base = []
        for ci, c in enumerate(scenario.classes):
            base.append(len(self.keys))
            for ti in range(len(c.templates)):
                for q in range(1, max(2, c.max_questions) + 1):
                    self.keys.append((ci, ti, q))
        self._base = np.array(base, dtype=np.int64)
        self._qmax = np.array([max(2, c.max_questions) for c in scenario.classes], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def ids(self, b: Batch) -> np.ndarray:
        ids: np.ndarray = self._base[b.cls] + b.tpl.astype(np.int64) * self._qmax[b.cls] + (b.questions - 1)
        return ids


def _cdf(p: np.ndarray) -> np.ndarray:
    """The cumulative distribution ``Generator.choice`` draws from for probabilities ``p``."""
    cdf: np.ndarray = p.cumsum()
    cdf /= cdf[-1]
    return cdf


class ArrivalStream:
    def __init__(self, scenario: Scenario) -> None:
        self.s = scenario
        self.rng = np.random.default_rng(scenario.seed)
        self.emitted = 0
        self._next_chunk = 0
        self._buffer: list[Batch] = []
        self._class_cdf = _cdf(np.array([c.share for c in scenario.classes]))
        self._tpl_cdf = [_cdf(np.array([t.weight for t in c.templates]) / sum(t.weight for t in c.templates))
                         for c in scenario.classes]
        self._tenants = [len(scenario.tenants(c)) for c in scenario.classes]
        self._trace: Batch | None = self._load_trace() if scenario.arrivals.process == "trace" else None
        self._trace_at = 0

    @property
    def limit(self) -> int:
        return self.s.max_queries or (1 << 62)

    def rate(self, t: np.ndarray) -> np.ndarray:
        a = self.s.arrivals
        r = np.full_like(t, a.rate_qps)
        if a.diurnal_amplitude:
            r *= 1 + a.diurnal_amplitude * np.sin(2 * math.pi * t / _DAY_S - _PEAK_PHASE)
        for b in a.bursts:
            r = np.where((t >= b.at_s) & (t < b.at_s + b.duration_s), r * b.factor, r)
        return r

    def _peak(self) -> float:
        a = self.s.arrivals
        return a.rate_qps * (1 + a.diurnal_amplitude) * max([1.0, *(b.factor for b in a.bursts)])

    def _chunk(self, k: int) -> Batch:
        t0 = k * _CHUNK_S
        t1 = min(t0 + _CHUNK_S, self.s.duration_s)
        if t1 <= t0:
            return Batch.empty()
        a = self.s.arrivals
        if self._trace is not None:
            lo, hi = np.searchsorted(self._trace.t, [t0, t1])
            return self._trace.slice(slice(lo, hi))
        if a.process == "constant":
            gap = 1.0 / a.rate_qps
            first = math.ceil(t0 / gap - 1e-9)
            t = np.arange(first, math.ceil(t1 / gap - 1e-9)) * gap
            t = t[(t >= t0) & (t < t1)]
        else:
            peak = self._peak()
            n = self.rng.poisson(peak * (t1 - t0))
            t = np.sort(self.rng.uniform(t0, t1, n))
            if peak > a.rate_qps:
                t = t[self.rng.uniform(0, peak, n) < self.rate(t)]
        return self._attributes(t)

    def _attributes(self, t: np.ndarray) -> Batch:
        n = len(t)
        cls = self._choice(self._class_cdf, n).astype(np.int32)
        tpl = np.zeros(n, dtype=np.int32)
        tenant = np.zeros(n, dtype=np.int32)
        questions = np.ones(n, dtype=np.int32)
        u = self.rng.uniform(size=n)
        for ci, c in enumerate(self.s.classes):
            sel = np.flatnonzero(cls == ci)
            if not len(sel):
                continue
            if len(self._tpl_cdf[ci]) > 1:
                tpl[sel] = self._choice(self._tpl_cdf[ci], len(sel))
            if self._tenants[ci] > 1:  # with one tenant, integers(0, 1) draws nothing and gives zeros
                tenant[sel] = self.rng.integers(0, self._tenants[ci], size=len(sel))
            multi = sel[u[sel] < c.multi_question_share]
            questions[multi] = self.rng.integers(2, max(2, c.max_questions) + 1, size=len(multi))
        return Batch(t, cls, tpl, tenant, questions)

    def _choice(self, cdf: np.ndarray, n: int) -> np.ndarray:
        """``rng.choice(len(p), size=n, p=p)`` exactly (same draws, same result), without its
        per-call validation of ``p``, which cost more than the draw for a chunk of queries."""
        idx: np.ndarray = np.searchsorted(cdf, self.rng.random(n), side="right")
        return idx

    def _load_trace(self) -> Batch:
        class Row(msgspec.Struct, forbid_unknown_fields=True):
            t: float
            cls: str | None = msgspec.field(default=None, name="class")
            tenant: str | None = None
            questions: int = 1

        path = self.s.trace_path()
        rows: list[Row] = []
        decoder = msgspec.json.Decoder(Row)
        for i, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(decoder.decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ScenarioError(f"{path}:{i}: {exc} (a line is {{\"t\": seconds, \"class\"?: name, "
                                    f"\"tenant\"?: name, \"questions\"?: n}})") from None
        rows.sort(key=lambda r: r.t)
        drawn = self._attributes(np.array([r.t for r in rows], dtype=np.float64))
        names = {c.name: i for i, c in enumerate(self.s.classes)}
        for i, r in enumerate(rows):
            if r.cls is not None:
                if r.cls not in names:
                    raise ScenarioError(f"{path}: line with t={r.t}: unknown class {r.cls!r}; known: {sorted(names)}")
                drawn.cls[i] = names[r.cls]
            c = self.s.classes[drawn.cls[i]]
            tenants = self.s.tenants(c)
            if r.tenant is not None:
                if r.tenant not in tenants:
                    raise ScenarioError(f"{path}: line with t={r.t}: tenant {r.tenant!r} is not one of class "
                                        f"{c.name!r}'s tenants ({', '.join(tenants[:5])}…)")
                drawn.tenant[i] = tenants.index(r.tenant)
            drawn.tenant[i] = min(drawn.tenant[i], len(tenants) - 1)
            drawn.tpl[i] = min(drawn.tpl[i], len(c.templates) - 1)
            drawn.questions[i] = max(1, min(r.questions, max(2, c.max_questions)))
        return drawn

    def take(self, until_s: float) -> Batch:
        """Every query arriving before ``until_s`` not taken yet (bounded by max_queries)."""
        until_s = min(until_s, self.s.duration_s)
        while self._next_chunk * _CHUNK_S < until_s:
            self._buffer.append(self._chunk(self._next_chunk))
            self._next_chunk += 1
        pending = Batch.concat(self._buffer)
        cut = int(np.searchsorted(pending.t, until_s))
        cut = min(cut, self.limit - self.emitted)
        out, rest = pending.slice(slice(0, cut)), pending.slice(slice(cut, None))
        self._buffer = [rest] if len(rest) and self.emitted + cut < self.limit else []
        self.emitted += cut
        return out

    def done(self, now_s: float) -> bool:
        return self.emitted >= self.limit or now_s >= self.s.duration_s
