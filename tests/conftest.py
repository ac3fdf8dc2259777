from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from homeskillet.localmodel import LocalModel, get_local_model, prepare_blas

pytest_plugins = ["homeskillet.testing"]

# Property tests assert properties, never speed: a loaded CI machine must not fail them on a
# per-example deadline or the too-slow health check.
settings.register_profile("homeskillet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("homeskillet")

prepare_blas()  # before any test imports mlx: the fast BLAS must be loaded first


@pytest.fixture(scope="session")
def local_model() -> Iterator[LocalModel]:
    """The real default model (SmolLM2-135M-Instruct), loaded once per session. Its conversion is
    cached in the state directory (HOMESKILLET_MODELS_DIR), so it happens once per machine, not per run."""
    model = get_local_model()
    model.wait_loaded(timeout=600)
    yield model


_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """After every report is written: end without mlx's C++ teardown if a local model ran here
    (it aborts the process at exit about half the time; see ``exit_now_if_models_ran``)."""
    from homeskillet.localmodel.engine import exit_now_if_models_ran

    exit_now_if_models_ran(_status[-1] if _status else 0)
