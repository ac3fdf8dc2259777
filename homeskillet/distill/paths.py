"""Where distillation keeps its files: training rounds under the state directory, adapters where
every local pool on this host finds them by name (``HOMESKILLET_ADAPTERS_DIR`` moves them)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["adapters_dir", "distill_dir"]


def _state() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("homeskillet"))


def adapters_dir() -> Path:
    env = os.environ.get("HOMESKILLET_ADAPTERS_DIR")
    return Path(env).expanduser() if env else _state() / "adapters"


def distill_dir() -> Path:
    env = os.environ.get("HOMESKILLET_DISTILL_DIR")
    return Path(env).expanduser() if env else _state() / "distill"
