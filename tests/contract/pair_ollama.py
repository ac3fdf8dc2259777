"""``ollama`` paired with ``homeskillet node``: the Ollama HTTP API, here over the toy test model."""

from __future__ import annotations

from pair import Pair
from toy_model import get_model

from homeskillet.node import create_node_app
from homeskillet.providers.base import AllocationRequest
from homeskillet.providers.ollama import OllamaConnector

PAIR = Pair(
    provider="ollama",
    make_app=lambda: create_node_app(get_model(), models=["hs-tiny"]),
    make_connector=lambda url, _key: OllamaConnector(base_url=url),
    model="hs-tiny",
    api_key="",  # Ollama takes no credential
    ready_path="/api/version",
    want=AllocationRequest(model="hs-tiny"),
)
