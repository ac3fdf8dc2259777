"""RunPod simulator: GraphQL and REST v1 control planes, seeded GPU stock, spot preemption, inference.

``create_app(config)`` returns the ASGI app; its world is ``app.state.sim`` (``RunPodState``): GPU
types and stock, pods, the injectable clock (``state.clock.advance(s)`` under ``time_scale=0``),
the bill (``state.total_cost()``) and counters. Knobs in ``SimConfig.extra``: ``boot_s`` (seconds
until ``runtime`` appears, before ``faults.slow_ready_s``; default 0), ``stock`` (``{gpuTypeId:
{dataCenterId: free GPUs}}`` overriding the seeded stock), ``epoch`` (clock start, epoch seconds).
"""

from homeskillet.sims.runpod.app import create_app
from homeskillet.sims.runpod.catalog import DataCenter, GpuType
from homeskillet.sims.runpod.graphql import GraphQLError, parse
from homeskillet.sims.runpod.state import NO_STOCK, Clock, DeploySpec, Pod, RunPodError, RunPodState, SimClock

__all__ = [
    "NO_STOCK",
    "Clock",
    "DataCenter",
    "DeploySpec",
    "GpuType",
    "GraphQLError",
    "Pod",
    "RunPodError",
    "RunPodState",
    "SimClock",
    "create_app",
    "parse",
]
