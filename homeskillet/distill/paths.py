"""Where distillation keeps its files: training rounds under the state directory; adapters where
every local pool on this host finds them by name (``localmodel.store.adapters_dir``)."""

from __future__ import annotations

import os
from pathlib import Path

from ..localmodel.store import adapters_dir

__all__ = ["adapters_dir", "distill_dir"]


def _state() -> Path:
    from platformdirs import user_state_dir

    return Path(user_state_dir("homeskillet"))


def distill_dir() -> Path:
    env = os.environ.get("HOMESKILLET_DISTILL_DIR")
    return Path(env).expanduser() if env else _state() / "distill"
