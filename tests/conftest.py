from collections.abc import Iterator

import pytest

from homeskillet.localmodel import LocalModel, get_local_model, prepare_blas

pytest_plugins = ["homeskillet.testing"]

prepare_blas()  # before any test imports mlx: the fast BLAS must be loaded first


@pytest.fixture(scope="session")
def local_model() -> Iterator[LocalModel]:
    """The real default model (SmolLM2-135M-Instruct), loaded once per session. Its conversion is
    cached in the state directory (HOMESKILLET_MODELS_DIR), so it happens once per machine, not per run."""
    model = get_local_model()
    model.wait_loaded(timeout=600)
    yield model
