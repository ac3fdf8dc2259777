"""OpenRouter: chat completions priced per token, paired with ``homeskillet.sims.openrouter``."""

from __future__ import annotations

from typing import Any

from pair import Pair

from homeskillet.providers.base import Connector
from homeskillet.providers.openrouter import OpenRouterConnector
from homeskillet.sims.base import SimConfig
from homeskillet.sims.openrouter import create_app


def make_app() -> Any:
    return create_app(SimConfig(seed=3, time_scale=0))


def make_connector(base_url: str, api_key: str) -> Connector:
    return OpenRouterConnector(base_url=base_url + "/api/v1", api_key=api_key)


PAIR = Pair(
    provider="openrouter",
    make_app=make_app,
    make_connector=make_connector,
    model="openai/gpt-4o-mini",
    ready_path="/api/v1/models",
)
