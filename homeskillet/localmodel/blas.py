"""A fast BLAS for mlx on Linux CPUs, loaded before mlx is imported.

The ``mlx[cpu]`` wheel links the reference BLAS (2–6 GFLOP/s on one matmul of the default model's
shapes). mlx resolves ``cblas_sgemm`` through the process's global symbol scope, so a library that
exports it, loaded with ``RTLD_GLOBAL`` before ``mlx.core`` is imported, takes over: Debian's
``libopenblas0-pthread`` runs the same matmul at 75–90 GFLOP/s on this machine's CPU.

What was checked on PyPI: numpy's bundled OpenBLAS and ``scipy-openblas32/64`` prefix their symbols
(``scipy_cblas_sgemm``), so they cannot stand in; ``cmeel-openblas`` exports the plain symbols but
is built for one CPU family (SkylakeX: "Illegal instruction" on an AVX2-only CPU) and needs a system
``libgfortran.so.5``; the ``mkl`` wheel works (65 GFLOP/s) but weighs about 1 GB. So the fix is the
Debian package, which ``make`` installs when it can (root and apt-get); without it the product warns
once and names it.

``HOMESKILLET_BLAS``: a library path or soname to load instead, or ``none`` to load nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading

from ..telemetry import get_logger

__all__ = ["FIX", "BlasChoice", "blas", "prepare_blas"]

FIX = "apt-get install libopenblas0-pthread (or `make install-blas`), or set HOMESKILLET_BLAS=/path/to/libopenblas.so"
# Debian's alternatives link first, then the pthread build's own directory (present even if another
# BLAS won the alternatives), then whatever the linker cache knows as "openblas".
_CANDIDATES = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)

log = get_logger("homeskillet.localmodel")
_lock = threading.Lock()


class BlasChoice:
    """Which BLAS this process's mlx uses: ``name`` (a path or soname) or ``reference``/``accelerate``."""

    def __init__(self, name: str, fast: bool, why: str = "") -> None:
        self.name, self.fast, self.why = name, fast, why

    def __repr__(self) -> str:
        return f"BlasChoice({self.name!r}, fast={self.fast})"


_choice: BlasChoice | None = None


def _load(name: str) -> bool:
    try:
        ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
    except OSError:
        return False
    return True


def prepare_blas() -> BlasChoice:
    """Load a fast BLAS globally if mlx is not imported yet (once per process); warn once if none.

    Call before the first ``import mlx``; every path into mlx in Homeskillet goes through here."""
    global _choice
    with _lock:
        if _choice is not None:
            return _choice
        _choice = _decide()
        if not _choice.fast:
            log.warning("slow_blas", blas=_choice.name, why=_choice.why, fix=FIX,
                        detail="local models run 10-30x slower on the reference BLAS")
        return _choice


def _decide() -> BlasChoice:
    if sys.platform == "darwin":
        return BlasChoice("accelerate", True)  # mlx uses Accelerate and Metal there
    wanted = os.environ.get("HOMESKILLET_BLAS", "").strip()
    if wanted.lower() == "none":
        return BlasChoice("reference", False, "HOMESKILLET_BLAS=none")
    if "mlx.core" in sys.modules:
        return BlasChoice("reference", False, "mlx was imported before Homeskillet could load a BLAS")
    if wanted:
        if _load(wanted):
            return BlasChoice(wanted, True)
        return BlasChoice("reference", False, f"HOMESKILLET_BLAS={wanted} could not be loaded")
    found = ctypes.util.find_library("openblas")
    for name in (*_CANDIDATES, *([found] if found else [])):
        if _load(name):
            return BlasChoice(name, True)
    return BlasChoice("reference", False, "no OpenBLAS found on this machine")


def blas() -> BlasChoice | None:
    """The choice made by ``prepare_blas`` (None before it ran)."""
    return _choice
