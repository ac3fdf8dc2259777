"""``openrouter/*`` pools: OpenRouter's OpenAI-compatible chat completions (``provider-apis.md``
§10), with the ``models`` fallbacks and ``provider`` preferences passed through from the pool's
options, prices from ``/models`` and cost from the model that actually ran. No allocation.

A package: the pure half (``wire``) and the I/O half (``connector``).
"""

from .connector import OpenRouterConnector, OpenRouterOptions

__all__ = ["OpenRouterConnector", "OpenRouterOptions"]
