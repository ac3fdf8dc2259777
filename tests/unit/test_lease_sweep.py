"""A lease whose strike never comes expires and is swept before the pool agent counts its
capacity; a committed lease lives until its strike's deadline. The agent runs as in production
(a supervised pykka actor); only its clock is ours."""

from __future__ import annotations

import pytest

from homeskillet.analyze import analyze
from homeskillet.covenant import CovenantBook
from homeskillet.errors import LeaseRejected
from homeskillet.pools import CommitLease, PoolAgent, PoolState, ReleaseLease
from homeskillet.supervisor import Supervisor
from homeskillet.testing import echo_pool
from homeskillet.wire import Award, Bid, CallForProposals, Query, Refusal, Strike


async def test_expired_leases_are_swept_and_committed_ones_kept_until_their_deadline() -> None:
    t = [1_000_000]
    state = PoolState(echo_pool(capacity=1, queue_limit=1), lease_ttl_ms=1000, clock=lambda: t[0])
    sup = Supervisor()
    agent = sup.start("pool", PoolAgent, state)
    try:
        query = Query(query_id="q", prompt="lease me", model="gemma-2b")
        cov = CovenantBook.load(None).resolve(query)
        frag = analyze(query, cov)[0]
        cfp = CallForProposals(cfp_id="c", query_id="q", covenant=cov, model=frag.model,
                               prompt_tokens=frag.prompt_tokens, max_tokens=frag.max_tokens, reply_by_ms=t[0])
        bid = await agent.call(cfp)
        assert isinstance(bid, Bid)

        def award(sid: str) -> Award:
            return Award(cfp_id="c", bid=bid, query_id="q", strike_id=sid)

        await agent.call(award("a"))
        await agent.call(award("b"))  # two leases fill capacity 1 + queue 1; neither strike ever comes
        assert isinstance(await agent.call(cfp), Refusal)
        with pytest.raises(LeaseRejected):
            await agent.call(award("c"))
        t[0] += 1001
        assert isinstance(await agent.call(cfp), Bid)  # both expired: swept before counting
        assert state.leases == {}

        lease = await agent.call(award("d"))
        strike = Strike(strike_id="d", query_id="q", tenant="t", covenant_id=cov.covenant_id, pool=bid.pool,
                        fragment=frag, model=frag.model, lease_id=lease.lease_id, deadline_ms=t[0] + 5000)
        await agent.call(CommitLease(strike))  # the strike runs: its lease lives to the deadline
        t[0] += 3000
        await agent.call(cfp)
        assert lease.lease_id in state.leases
        assert await agent.call(ReleaseLease(strike_id="d"))  # its end frees it
        assert state.leases == {} and state.by_strike == {}

        late = await agent.call(award("e"))
        t[0] += 1001
        with pytest.raises(LeaseRejected, match="unknown or expired"):  # too late to commit, and freed
            await agent.call(CommitLease(Strike(strike_id="e", query_id="q", tenant="t", covenant_id="",
                                                pool=bid.pool, fragment=frag, model=frag.model,
                                                lease_id=late.lease_id)))
        assert state.leases == {}
    finally:
        sup.stop_all()
