"""Process-level settings that make the NumPy hot path fast: one place, called by entry points.

Training allocates the same large temporaries (im2col matrices of several MB) every
step.  glibc's malloc serves blocks that large with fresh `mmap`s and returns them on
free, so every step page-faults and zero-fills megabytes again: measured here, that
halved throughput.  Raising the mmap and trim thresholds lets freed blocks be reused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling for this setting on 64-bit
_TRIM_THRESHOLD = 256 * 1024 * 1024

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def tune_malloc() -> bool:
    """Keep large freed blocks for reuse (glibc only).  Returns whether it applied."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): nothing to tune
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok


def single_thread_blas_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of `env` (default: os.environ) with BLAS pinned to one thread.

    Worker processes run side by side, one per core: a BLAS pool in each would
    oversubscribe the cores.  These variables only act before NumPy is imported, so
    they are set for child processes, and at the top of each entry point.
    """
    out = dict(os.environ if env is None else env)
    for var in BLAS_THREAD_VARIABLES:
        out[var] = "1"
    return out
