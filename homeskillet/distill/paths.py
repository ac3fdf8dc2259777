"""Where distillation keeps its files: training rounds under the state directory; adapters where
every local pool on this host finds them by name (``localmodel.store.adapters_dir``)."""

from __future__ import annotations

from pathlib import Path

from ..localmodel.store import adapters_dir
from ..statedir import state_path

__all__ = ["adapters_dir", "distill_dir"]


def distill_dir() -> Path:
    return state_path("distill", "HOMESKILLET_DISTILL_DIR")
