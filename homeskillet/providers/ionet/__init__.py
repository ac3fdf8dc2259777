"""io.net connector (``provider = "ionet"``): prepaid CaaS deployments serving an OpenAI-compatible
model server. See ``connector.py`` for the flow and ``options.py`` for the pool options."""

from .connector import IonetConnector
from .options import IonetOptions

__all__ = ["IonetConnector", "IonetOptions"]
