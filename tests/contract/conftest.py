"""Discovers every ``pair_<provider>.py`` here and serves each pair's simulator on a real port."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pair import Pair

from homeskillet.testing import serve_asgi

PAIRS: dict[str, Pair] = {}
for path in sorted(Path(__file__).parent.glob("pair_*.py")):
    mod = importlib.import_module(path.stem)
    PAIRS[mod.PAIR.provider] = mod.PAIR


class Served:
    def __init__(self, pair: Pair, app: object, url: str) -> None:
        self.pair, self.app, self.url = pair, app, url


@pytest.fixture(scope="module", params=sorted(PAIRS))
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    pair = PAIRS[request.param]
    app = pair.make_app()
    with serve_asgi(app, pair.ready_path) as url:
        yield Served(pair, app, url)
