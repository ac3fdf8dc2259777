"""hosted.ai simulator: JWT auth, vGPU pool allocations, inference on an allocation, per-second billing.

Speaks the allocation API of ``provider-apis.md`` §9. A client branches on the error ``code``
(``token_expired`` means refresh and retry). Choices the source leaves open, made here:

- no capacity is **409** ``insufficient_capacity`` (this pool is full, try another), kept apart
  from **503** ``service_unavailable`` (the service is down, retry later);
- an eviction in the middle of an inference is **410** ``preempted`` (the allocation is gone);
- a network partition (``timeout_rate``) hangs for ``timeout_s`` then answers **504**.

A package rather than one module: wire bodies, state (no HTTP) and the HTTP adapter are three
concepts, and together they pass the 300-line module budget.
"""

from homeskillet.sims.hostedai.app import create_app
from homeskillet.sims.hostedai.state import DEFAULT_TIERS, HostedAISim, Lease
from homeskillet.sims.hostedai.wire import Allocation, HostedAIError, Pool

__all__ = ["DEFAULT_TIERS", "Allocation", "HostedAIError", "HostedAISim", "Lease", "Pool", "create_app"]
