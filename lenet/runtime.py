"""Process-level settings, called first thing by every entry point; and what a worker says of its machine
(`host_id`, `usable_cores`).

BLAS threads: pinned to one, before NumPy is imported (this module imports no
NumPy, and `lenet/__init__` is lazy, so `from lenet.runtime import ...` is safe
first).  The thread count changes matmul rounding, so one thread everywhere is what
makes runs bit-reproducible; and workers run one per core, so more would only
oversubscribe the cores.

malloc: training allocates the same large temporaries (im2col matrices of several MB) every
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


def raise_open_files_limit() -> int:
    """Let this process open as many files as the system allows it (the soft limit up to the hard one).

    A coordinator or relay holds a socket per connected peer: 1,024 workers need more
    than the usual soft limit of 1,024 descriptors.  Returns the limit now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # the system refuses: the run works up to the limit there is
    return soft


def pin_blas_threads() -> None:
    """One BLAS thread for this process, unless the variables are already set.

    Only effective before NumPy is first imported.
    """
    for var in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(var, "1")


def single_thread_blas_env() -> dict[str, str]:
    """A copy of os.environ with BLAS pinned to one thread, for child processes."""
    return {**os.environ, **{var: "1" for var in BLAS_THREAD_VARIABLES}}


def host_id(boot_id: str = "/proc/sys/kernel/random/boot_id") -> str:
    """This machine's identity for the coordinator: 16 hex digits of a hash of the kernel's boot id, or "".

    Containers and pods on one machine share its kernel, so they share the boot id: workers
    that say the same host id take turns on the same cores.  Hashed, so the id itself is not
    sent; "" (unknown: no sharing assumed) where there is no such file.
    """
    import hashlib

    try:
        with open(boot_id, "rb") as f:
            raw = f.read(64).strip()
    except OSError:
        return ""
    return hashlib.sha256(b"lenet5-host:" + raw).hexdigest()[:16] if raw else ""


def usable_cores(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """How many cores this process may run on at once: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open(cgroup_cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))  # a quota of 1.5 cores keeps 2 busy
    except (OSError, ValueError):
        pass
    return max(1, cores)
