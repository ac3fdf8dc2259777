"""``homeskillet simulate``: a scenario in virtual time, with Homeskillet's own decision code.

Time advances a quote interval at a time. At each tick every pool quotes (``PoolState.offer``,
the agent's real offer with its track record); the fragments that became ready during the tick
are negotiated against that book with the same functions the orchestrator uses
(``fallback_chain`` / ``fallback_plan``, ``broker.bids_from_quotes`` → ``make_bid`` and ``rank``),
struck, queued at the pool, and judged (``orchestrator.judge``'s rules) when they end.

What makes a simulated day of 10 M queries take minutes: fragments that are alike to every
decision (same class, template and question count, same step, same excluded pools) are decided
together, once per tick — exactly what live does within a quote interval, since every award in it
is priced on the same standing quotes and loop-side admission refuses a pool once it is full
(the next bid is then struck). Approximations, stated: decisions within a tick see the book as
quoted at its start; faults act on strikes already in flight when the tick begins; a strike that
fails is re-negotiated within the same tick when it fails early enough (up to four rounds),
otherwise at the next tick; allocation overhead is a constant (``stack.overhead_ms``).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ..covenant import CovenantBook, Step
from ..orchestrator import fallback_plan
from ..wire import Covenant, Query, Quote
from .arrivals import ArrivalStream, CohortTable
from .outcomes import Queries, ewma, judge_many
from .policies import Policy, policy
from .report import ERROR_KINDS, Observations, PoolUsage, Series
from .scenario import Scenario, describe
from .vtime import FAILED, LATE, LOST, OK, PREEMPTED, Items, VPool

__all__ = ["VirtualRun", "simulate"]

_ROUNDS = 4  # re-negotiation rounds within one tick for strikes that failed early in it


class VirtualRun:
    def __init__(self, scenario: Scenario, policy_name: str = "covenant", covenants: CovenantBook | None = None,
                 progress: Callable[[float, int], None] | None = None) -> None:
        self.s = scenario
        self.policy: Policy = policy(policy_name)
        self.book = covenants or CovenantBook.load()
        self.progress = progress
        self.rng = np.random.default_rng([scenario.seed, 1])
        self.dt = scenario.stack.quote_interval_ms / 1000.0
        self.ttl_ms = 3 * scenario.stack.quote_interval_ms
        overhead = scenario.stack.overhead_ms / 1000.0
        self.pools = [VPool(i, fp, np.random.default_rng([scenario.seed, 2, i]), overhead)
                      for i, fp in enumerate(scenario.pools)]
        self.overhead_s = overhead
        self.by_name = {p.spec.name: p for p in self.pools}
        self._excluded: dict[int, set[str]] = {}  # exclusion bitmask -> pool names
        self.p_in = np.array([p.spec.usd_per_mtok_in for p in self.pools])
        self.p_out = np.array([p.spec.usd_per_mtok_out for p in self.pools])
        self.p_hour = np.array([p.spec.usd_per_hour for p in self.pools])  # per slot
        self.p_bit = np.array([p.bit for p in self.pools], dtype=np.uint64)
        self.arrivals = ArrivalStream(scenario)
        self.cohorts = CohortTable(scenario)
        # Per (class, template): the covenant a query of it is resolved to, as the gateway would.
        self.covs: dict[tuple[int, int], Covenant] = {}
        for ci, c in enumerate(scenario.classes):
            for ti, tpl in enumerate(c.templates):
                self.covs[ci, ti] = self.book.resolve(Query(covenant=c.covenant, overrides=c.overrides or None,
                                                            max_tokens=tpl.max_tokens))
        self.plans = {k: fallback_plan(self.policy.chain(cov)) for k, cov in self.covs.items()}
        ck = self.cohorts.keys
        self.coh_cls = np.array([k[0] for k in ck], dtype=np.int64)
        self.coh_tokens = np.array([max(1, scenario.classes[c].templates[t].prompt_tokens // q) for c, t, q in ck])
        self.coh_max = np.array([self.covs[c, t].max_tokens for c, t, _ in ck])
        self.coh_deadline = np.array([self.covs[c, t].qos.hard_deadline_ms / 1000.0 for c, t, _ in ck])
        self.coh_target = np.array([float(self.covs[c, t].qos.latency_target_ms) for c, t, _ in ck])
        self.coh_ceiling = np.array([self.covs[c, t].cost.max_usd_per_request or np.inf for c, t, _ in ck])
        self.coh_model = [self.covs[c, t].resources.model for c, t, _ in ck]
        # Tenants by name across classes (two classes may bill the same tenant, as the ledger does).
        names: dict[str, int] = {}
        self.ten_of = [np.array([names.setdefault(t, len(names)) for t in scenario.tenants(c)], dtype=np.int32)
                       for c in scenario.classes]
        self.spent = np.zeros(len(names))  # ledger per tenant: holds and settlements
        self.terms = ["", "cost.max_usd_per_request", "qos.latency_target_ms", "qos.hard_deadline_ms",
                      "resources.min_vram_mb", "resources.min_tflops", "resources.accelerator", "resources.gpu_models",
                      "qos.preemptible", "cost.max_usd_per_hour", "resources.model"]
        self.broken: dict[tuple[int, int], int] = defaultdict(int)  # (class, term) -> fragments
        self.frags_ok = np.zeros(len(scenario.classes), dtype=np.int64)
        expect = int(scenario.arrivals.rate_qps * scenario.duration_s * 1.1) if scenario.arrivals.rate_qps else 0
        self.q = Queries(min(expect, scenario.max_queries or expect))
        self.waiting = Items.zeros()
        self.ledger = 0.0
        self.tokens_in = self.tokens_out = 0
        nb = max(1, min(240, int(scenario.duration_s / self.dt)))
        self.series = Series(np.linspace(0.0, scenario.duration_s, nb + 1), len(self.pools))
        self.down: set[str] = set()  # pools marked down this tick, by name
        self._faults = sorted(scenario.faults, key=lambda f: f.at_s)
        self.enacted: list[str] = []

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> Observations:
        wall0 = time.perf_counter()
        k = 0
        while True:
            t0, t1 = k * self.dt, (k + 1) * self.dt
            self._apply_faults(t0, t1)
            quotes = [p.quote(t0, self.ttl_ms) for p in self.pools if p.alive(t0)]
            self._arrive(t1)
            self.down = set()
            for _ in range(_ROUNDS):
                self._complete(t1)
                ready = self.waiting["ready"] < t1
                if not ready.any():
                    break
                batch, self.waiting = self.waiting.take(ready), self.waiting.take(~ready)
                self._negotiate(batch, quotes, t0)
            k += 1
            if self.progress is not None and k % 64 == 0:
                self.progress(t1, self.q.n)
            if self.arrivals.done(t1) and not len(self.waiting) and not any(len(p.inflight) for p in self.pools):
                break
        if self.progress is not None:
            self.progress(k * self.dt, self.q.n)
        return self._observations(time.perf_counter() - wall0, k * self.dt)

    def _arrive(self, t1: float) -> None:
        b = self.arrivals.take(t1)
        if not len(b):
            return
        qidx = self.q.add(b.t, b.cls, b.questions)
        reps = b.questions.astype(np.int64)
        n = int(reps.sum())
        coh = np.repeat(self.cohorts.ids(b), reps).astype(np.int32)
        t = np.repeat(b.t, reps)
        new = Items.zeros(n)
        new["q"], new["coh"], new["ten"] = np.repeat(qidx, reps), coh, np.repeat(self._tenants(b.cls, b.tenant), reps)
        new["arr"], new["ready"], new["park"] = t, t, np.nan
        self.waiting = Items.concat([self.waiting, new])

    def _tenants(self, cls: np.ndarray, tenant: np.ndarray) -> np.ndarray:
        out = np.zeros(len(cls), dtype=np.int32)
        for ci, table in enumerate(self.ten_of):
            sel = cls == ci
            out[sel] = table[tenant[sel]]
        return out

    # --- negotiation ----------------------------------------------------------------------------

    def _negotiate(self, items: Items, quotes: list[Quote], t0: float) -> None:
        keys = (items["ready"], items["excl"], items["step"], items["coh"], np.isnan(items["park"]))
        order = np.lexsort(keys)
        items = items.take(order)
        cut = np.zeros(len(items), dtype=bool)
        cut[0] = True
        for name in ("coh", "step", "excl"):
            cut[1:] |= items[name][1:] != items[name][:-1]
        parked = ~np.isnan(items["park"])
        cut[1:] |= parked[1:] != parked[:-1]
        bounds = [*np.flatnonzero(cut).tolist(), len(items)]
        room = {p.spec.name: p.limit - p.in_flight(t0) for p in self.pools}
        struck: dict[int, list[np.ndarray]] = defaultdict(list)
        for a, b in itertools.pairwise(bounds):
            self._walk(items.take(slice(a, b)), quotes, room, struck, t0)
        for idx, parts in struck.items():
            group = Items(np.concatenate(parts))  # the struck records, by pool
            coh = group["coh"]
            self.pools[idx].strike(group, self.coh_max[coh], group["arr"] + self.coh_deadline[coh], t0)

    def _walk(self, g: Items, quotes: list[Quote], room: dict[str, int],
              struck: dict[int, list[np.ndarray]], t0: float) -> None:
        """One group of alike fragments down the covenant's fallback plan (orchestrator._serve_fragment)."""
        first = g.a[0]  # what the group's fragments have alike
        c, i = int(first["coh"]), int(first["step"])
        ci, ti, _ = self.cohorts.keys[c]
        cov, plan = self.covs[ci, ti], self.plans[ci, ti]
        deadline = self.coh_deadline[c]
        if g["arr"].min() + deadline <= t0:
            late = g["arr"] + deadline <= t0
            self._fail(g.take(late), "deadline_exceeded")
            g = g.take(~late)
            if not len(g):
                return
        excl = self._names(int(first["excl"]))
        if not math.isnan(first["park"]):
            # Parked: the book changed, so retry the strikeable steps before the queue step, each
            # with a fresh exclusion list (as _wait_parked does); a strike that fails comes back here.
            for step, degrade in plan[:i]:
                if step.kind in ("queue", "fail") or not len(g):
                    continue
                g = self._strike_step(g, quotes, step, degrade, cov, c, set(), room, struck, i)
            if not len(g):
                return
            expired = g["park"] <= t0
            keep = g.take(~expired)
            keep["ready"] = t0 + self.dt
            self.waiting = Items.concat([self.waiting, keep])
            g = g.take(expired)
            g["park"] = np.nan
            i += 1
        while len(g) and i < len(plan):
            step, degrade = plan[i]
            if step.kind == "fail":
                break
            if step.kind == "queue":
                until = np.minimum(g["arr"] + self.coh_deadline[c], t0 + cov.fallback.queue_max_wait_ms / 1000.0)
                g["park"], g["step"], g["ready"] = until, i, t0 + self.dt
                self.waiting = Items.concat([self.waiting, g])
                return
            g = self._strike_step(g, quotes, step, degrade, cov, c, excl, room, struck, i)
            i += 1
            g["fb"] = 1
        if len(g):
            self._fail(g, "no_pool")

    def _names(self, mask: int) -> set[str]:
        """The pools an exclusion bitmask names (do not modify: shared)."""
        names = self._excluded.get(mask)
        if names is None:
            names = self._excluded[mask] = {p.spec.name for p in self.pools if mask & (1 << p.index)}
        return names

    def _strike_step(self, g: Items, quotes: list[Quote], step: Step, degrade: bool, cov: Covenant, c: int,
                     excl: set[str], room: dict[str, int], struck: dict[int, list[np.ndarray]],
                     i: int) -> Items:
        """Strike as many of ``g`` as the step's pools admit; return the rest."""
        pt, mt = int(self.coh_tokens[c]), int(self.coh_max[c])
        ranked = self.policy.candidates(quotes, step, cov, prompt_tokens=pt, max_tokens=mt, exclude=excl | self.down,
                                        allow_degrade=degrade, now=quotes[0].issued_at_ms if quotes else 0)
        if not ranked:
            return g
        if cov.cost.tenant_budget_usd is not None:
            g = self._hold(g, ranked[0].bid.price_usd, cov.cost.tenant_budget_usd)
        taken = 0
        for r, n in self.policy.split(ranked, len(g), room):
            term = self.policy.breaks(r.bid, cov, prompt_tokens=pt, max_tokens=mt)
            part = g.a[taken:taken + n]  # a view: g is this walk's own, and what is struck is copied to the pool
            part["step"], part["price"] = i, r.bid.price_usd
            part["broke"] = self.terms.index(term) if term in self.terms else 0
            struck[self.by_name[r.bid.pool].index].append(g.v[taken:taken + n])
            room[r.bid.pool] -= n
            taken += n
        return g.take(slice(taken, None))

    def _hold(self, g: Items, price: float, budget: float) -> Items:
        """The ledger's budget hold: a strike whose tenant cannot cover it fails the query."""
        ten = g["ten"]
        order = np.argsort(ten, kind="stable")
        sorted_ten = ten[order]
        first = np.searchsorted(sorted_ten, sorted_ten, side="left")
        rank_in_tenant = np.arange(len(g)) - first
        need = np.empty(len(g))
        need[order] = self.spent[sorted_ten] + price * (rank_in_tenant + 1)
        ok = need <= budget
        if not ok.all():
            self._fail(g.take(~ok), "budget_exceeded")
        g = g.take(ok)
        np.add.at(self.spent, g["ten"], price)
        return g

    def _fail(self, g: Items, kind: str) -> None:
        q = g["q"]
        fresh = q[self.q.err[q] == 0]
        self.q.err[fresh] = ERROR_KINDS.index(kind)
        np.subtract.at(self.q.left, q, 1)

    # --- strikes ending -------------------------------------------------------------------------

    def _complete(self, horizon: float) -> None:
        """Every strike that ended before ``horizon``, all pools at once."""
        parts = [p.done(horizon) for p in self.pools]
        counts = [len(f) for f in parts]
        if any(counts):
            self._settle(Items.concat(parts), np.repeat(np.arange(len(self.pools), dtype=np.int64), counts))

    def _settle(self, f: Items, pidx: np.ndarray) -> None:
        """Settle, judge and record what ended (orchestrator.execute's after-strike half); the
        failed, preempted and lost go back to be struck elsewhere."""
        npools = len(self.pools)
        out, coh = f["out"], f["coh"]
        elapsed = f["end"] - f["ready"]
        cls = self.coh_cls[coh]
        tok_in, tok_out = self.coh_tokens[coh], self.coh_max[coh]
        hour = self.p_hour[pidx]
        per_token = (tok_in * self.p_in[pidx] + tok_out * self.p_out[pidx]) / 1e6
        held = np.maximum(0.0, elapsed - self.overhead_s) / 3600.0  # hours the strike held a slot
        cost = per_token + hour * held
        cost = np.where(hour == 0, np.minimum(cost, f["price"]), cost)  # never above the awarded price
        ok = out == OK
        billed = np.where(ok, cost, np.where(out == PREEMPTED, hour * held, 0.0))
        self.ledger += float(billed.sum())
        for i, usd in enumerate(np.bincount(pidx, weights=billed, minlength=npools).tolist()):
            self.pools[i].cost_usd += usd
        self.series.add_cost(f["end"], billed)
        self.series.add_busy_many(pidx, f["start"], f["end"])
        if self.spent.size:
            np.add.at(self.spent, f["ten"], billed - f["price"])  # settle the hold to what was billed
        # Verdicts feed each agent's track record (pools.TrackRecord), in completion order.
        elapsed_ms = elapsed * 1000.0
        broken_cost, broken_lat, broken_hard = judge_many(cost, elapsed_ms, self.coh_ceiling[coh],
                                                          self.coh_target[coh], self.coh_deadline[coh] * 1000.0)
        kept = ok & ~broken_cost & ~broken_lat & ~broken_hard & (f["broke"] == 0)
        totals = np.bincount(pidx, minlength=npools).tolist()
        kepts = np.bincount(pidx[kept], minlength=npools).tolist()
        for i in np.flatnonzero(totals).tolist():
            rec = self.pools[i].state.record
            rec.total += totals[i]
            rec.kept += kepts[i]
        if ok.any():
            okp, okend, okms, okcoh = pidx[ok], f["end"][ok], elapsed_ms[ok], coh[ok]
            order = np.lexsort((okend, okp))  # by pool, each in completion order
            okms, okcoh = okms[order], okcoh[order]
            lo = 0
            for i, n in enumerate(np.bincount(okp, minlength=npools).tolist()):
                if n:
                    state = self.pools[i].state
                    state.record.latency_ewma_ms = ewma(state.record.latency_ewma_ms, okms[lo:lo + n])
                    state.warm.update({self.coh_model[c] for c in okcoh[lo:lo + n].tolist()})
                    lo += n
        # Answered fragments.
        q = f["q"][ok]
        if len(q):
            np.maximum.at(self.q.lat, q, ((f["end"][ok] - f["arr"][ok]) * 1000.0).astype(np.float32))
            np.add.at(self.q.cost, q, cost[ok])
            np.subtract.at(self.q.left, q, 1)
            self.q.fb[q[f["fb"][ok] > 0]] = True
            self.tokens_in += int(tok_in[ok].sum())
            self.tokens_out += int(tok_out[ok].sum())
            np.add.at(self.frags_ok, cls[ok], 1)
            for term_i, mask in ((1, broken_cost), (2, broken_lat), (3, broken_hard)):
                m = mask & ok
                if m.any():
                    self._count_broken(cls[m] * len(self.terms) + term_i)
            bk = (f["broke"] > 0) & ok
            if bk.any():
                self._count_broken(cls[bk] * len(self.terms) + f["broke"][bk])
        late = out == LATE
        if late.any():
            self._fail(f.take(late), "deadline_exceeded")
        failed, preempted, lost = out == FAILED, out == PREEMPTED, out == LOST
        for attr, mask in (("failures", failed), ("preemptions", preempted), ("lost", lost)):
            if mask.any():
                for i, n in enumerate(np.bincount(pidx[mask], minlength=npools).tolist()):
                    setattr(self.pools[i], attr, getattr(self.pools[i], attr) + n)
        # mark_down: a pool that failed a strike is out of the book until it quotes again.
        gone = failed | lost
        if gone.any():
            self.down.update(self.pools[i].spec.name for i in np.unique(pidx[gone]).tolist())
        retry = failed | preempted | lost
        if retry.any():
            again = f.take(retry)
            again["ready"] = again["end"]
            again["excl"] = again["excl"] | self.p_bit[pidx[retry]]
            again["fb"] = 1
            self.waiting = Items.concat([self.waiting, again])

    def _count_broken(self, keys: np.ndarray) -> None:
        """Count broken terms by key ``class * len(terms) + term``."""
        counts = np.bincount(keys)
        for k in np.flatnonzero(counts).tolist():
            self.broken[divmod(k, len(self.terms))] += int(counts[k])

    # --- faults ---------------------------------------------------------------------------------

    def _apply_faults(self, t0: float, t1: float) -> None:
        while self._faults and self._faults[0].at_s < t1:
            f = self._faults.pop(0)
            named = [p for p in self.pools if p.spec.name == f.pool]
            self.enacted.append(describe(f))
            match f.kind:
                case "outage":
                    named[0].outages.append((f.at_s, f.at_s + f.duration_s))
                case "latency_spike":
                    named[0].spikes.append((f.at_s, f.at_s + f.duration_s, f.factor))
                case "preemption_storm":
                    for p in named or [p for p in self.pools if p.fp.preemptible]:
                        p.evict(f.at_s, f.share, PREEMPTED)
                case "worker_kill":
                    p = named[0]
                    p.evict(f.at_s, 1.0, LOST, delay_s=self.s.stack.silence_ms / 1000.0)
                    p.dead.append((f.at_s, f.at_s + f.duration_s))
                case "nats_kill":
                    # Clients on the killed node reconnect to another; strikes whose messages went
                    # through it are lost and found by silence. One node in n carries 1/n of them.
                    for p in self.pools:
                        p.evict(f.at_s, 1.0 / self.s.stack.nats_nodes, LOST, delay_s=self.s.stack.silence_ms / 1000.0)

    # --- results --------------------------------------------------------------------------------

    def _observations(self, wall_s: float, end_s: float) -> Observations:
        n = self.q.n
        q = self.q
        lost = (q.left[:n] > 0) & (q.err[:n] == 0)
        err = q.err[:n].astype(np.int16)
        err[lost] = ERROR_KINDS.index("lost")
        lat = np.where(err == 0, q.lat[:n].astype(np.float64), np.nan)
        pools = []
        dur = self.s.duration_s
        for p in self.pools:
            pools.append(PoolUsage(
                name=p.spec.name, simulates=p.fp.simulates, pool_class=p.spec.pool_class,
                accelerators=p.fp.accelerators, capacity=p.capacity, strikes=p.strikes, failures=p.failures,
                preemptions=p.preemptions, lost=p.lost, busy_s=p.busy_s, cost_usd=p.cost_usd,
                fleet_usd=p.fp.usd_per_hour * p.fp.accelerators * dur / 3600.0))
        classes = self.s.classes
        return Observations(
            scenario=self.s, mode="virtual", policy=self.policy.name, duration_s=dur, wall_s=wall_s,
            covenants=self.s.covenant_labels(),
            targets_ms=[float(self.covs[ci, 0].qos.latency_target_ms) for ci in range(len(classes))],
            t=q.t[:n].copy(), cls=q.cls[:n].astype(np.int16), latency_ms=lat, cost_usd=q.cost[:n].copy(),
            error=err, fallback=q.fb[:n].copy(), ledger_usd=self.ledger, tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            broken={(ci, self.terms[ti]): v for (ci, ti), v in self.broken.items()},
            fragments_ok=self.frags_ok.tolist(), pools=pools, series=self.series,
            alloc_ms=np.array([self.s.stack.overhead_ms]), faults=self.enacted)


def simulate(scenario: Scenario, *, policy_name: str = "covenant", covenants: CovenantBook | None = None,
             progress: Callable[[float, int], None] | None = None) -> Observations:
    """Run ``scenario`` in virtual time under one selection policy; same seed, same observations."""
    return VirtualRun(scenario, policy_name, covenants, progress).run()
