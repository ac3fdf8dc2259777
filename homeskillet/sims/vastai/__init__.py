"""Vast.ai simulator: a seeded offer market, rentals with Vast's failure modes, and inference.

``create_app(config)`` returns the ASGI app; its world is ``app.state.sim`` (``VastState``): offers,
instances, the injectable clock (``state.clock.advance(s)`` under ``time_scale=0``), the bill
(``state.total_cost()``) and counters. Knobs in ``SimConfig.extra``: ``offers`` (a list of offer
dicts replacing the seeded market), ``offer_count`` (default 20), ``boot_s`` (seconds from create to
running before ``faults.slow_ready_s``; default 0), ``oci_error_rate`` (instances that never start,
with Docker's OCI error in ``status_msg``), ``epoch`` (clock start, epoch seconds).
"""

from homeskillet.sims.vastai.app import create_app
from homeskillet.sims.vastai.market import Offer, SearchError, default_offers, search
from homeskillet.sims.vastai.state import Clock, Instance, SimClock, VastError, VastState

__all__ = [
    "Clock",
    "Instance",
    "Offer",
    "SearchError",
    "SimClock",
    "VastError",
    "VastState",
    "create_app",
    "default_offers",
    "search",
]
