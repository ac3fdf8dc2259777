"""The user's state directory (``platformdirs``), and the one rule for a part of it that an
environment variable moves: the embedded NATS data, converted models, adapters, distillation rounds."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["state_path"]


def state_path(name: str, env: str = "") -> Path:
    """``$env`` when set, else ``<user state dir>/homeskillet/<name>``."""
    if env and (moved := os.environ.get(env)):
        return Path(moved).expanduser()
    from platformdirs import user_state_dir

    return Path(user_state_dir("homeskillet")) / name
