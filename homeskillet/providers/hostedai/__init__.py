"""``hostedai/*`` pools: hosted.ai's software-defined vGPU pools (Standard, Premium, Preemptible,
Dedicated; the pool id is an option) through the allocation API of ``provider-apis.md`` §9.

A package: the pure half (``wire``: bodies and their mapping to our Structs and errors), the token
flow (``auth``) and the I/O half (``connector``) are three concepts.
"""

from .connector import HostedAIConnector, HostedAIOptions

__all__ = ["HostedAIConnector", "HostedAIOptions"]
