"""LoRA adapters by name, served over one base model without merging them into its weights.

A strike names an adapter in its model: ``<base>+<adapter>`` (``smollm2-135m+support-bot``). The
registry maps names to mlx-lm adapter directories (``adapter_config.json`` +
``adapters.safetensors``, as ``mlx_lm.lora`` writes them): registered explicitly (the pool option
``adapters = {name = "dir"}``, or ``register`` from code, which is how the distiller adds a
student), or found by name under a watched directory (pool option ``adapters_dir``: a trainer that
writes ``<adapters_dir>/<name>/`` makes ``<base>+<name>`` servable without a restart).

Merging an adapter into the base weights ruined the base model's general answers, so each adapter
gets its own model object whose base weights are the *same arrays* as the base model's (no copy)
with LoRA layers on top; the base model itself is never touched.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from ..errors import BadRequest

__all__ = ["AdapterRegistry", "UnknownAdapter", "split_model"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnknownAdapter(BadRequest):
    code = "unknown_adapter"
    status = 404


def split_model(model: str) -> tuple[str, str]:
    """``"base+adapter"`` → ``("base", "adapter")``; no ``+`` → ``(model, "")``."""
    base, _, adapter = model.partition("+")
    return base, adapter


class AdapterRegistry:
    """Adapter name → directory; thread-safe, looked up on every strike that names an adapter."""

    def __init__(self, adapters: dict[str, str] | None = None, watch_dir: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._dirs: dict[str, Path] = {}
        self.watch_dir = Path(watch_dir).expanduser() if watch_dir else None
        for name, path in (adapters or {}).items():
            self.register(name, path)

    def register(self, name: str, path: str | Path) -> None:
        """Serve ``path`` as ``name`` from the next strike on (replacing an earlier registration)."""
        if not _NAME.match(name):
            raise BadRequest(f"adapter name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
        d = Path(path).expanduser()
        if not (d / "adapter_config.json").is_file() or not (d / "adapters.safetensors").is_file():
            raise BadRequest(f"adapter {name!r}: {d} has no adapter_config.json + adapters.safetensors "
                             "(an mlx-lm LoRA adapter directory)")
        with self._lock:
            self._dirs[name] = d

    def unregister(self, name: str) -> None:
        with self._lock:
            self._dirs.pop(name, None)

    def path(self, name: str) -> Path:
        """The directory for ``name``: registered, or ``<watch_dir>/<name>``; else ``UnknownAdapter``."""
        with self._lock:
            if name in self._dirs:
                return self._dirs[name]
        if self.watch_dir is not None and _NAME.match(name):
            d = self.watch_dir / name
            if (d / "adapter_config.json").is_file() and (d / "adapters.safetensors").is_file():
                return d
        raise UnknownAdapter(f"no LoRA adapter named {name!r}; known: {', '.join(self.names()) or 'none'}"
                             + (f" (and none at {self.watch_dir}/{name})" if self.watch_dir else ""))

    def names(self) -> list[str]:
        with self._lock:
            names = set(self._dirs)
        if self.watch_dir is not None and self.watch_dir.is_dir():
            names |= {d.name for d in self.watch_dir.iterdir() if (d / "adapter_config.json").is_file()}
        return sorted(names)
