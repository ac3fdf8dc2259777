"""Local models on mlx-lm: the default SmolLM2-135M-Instruct converted once from its GGUF wheel
(``gguf``, ``store``), a fast BLAS before mlx loads (``blas``), one generation thread per model
(``engine``) and LoRA adapters by name over one base (``adapters``).

Nothing here imports mlx at import time; mlx and mlx-lm are the ``[mlx]`` extra.
"""

from .adapters import AdapterRegistry, UnknownAdapter, split_model
from .blas import prepare_blas
from .engine import Generation, GenRequest, LocalModel, Run, get_local_model
from .store import DEFAULT_MODEL, ModelMissing, models_dir, resolve_model_dir

__all__ = [
    "DEFAULT_MODEL",
    "AdapterRegistry",
    "GenRequest",
    "Generation",
    "LocalModel",
    "ModelMissing",
    "Run",
    "UnknownAdapter",
    "get_local_model",
    "models_dir",
    "prepare_blas",
    "resolve_model_dir",
    "split_model",
]
