"""Each worker gets its share of the cores for BLAS (no oversubscription).

P workers each running a BLAS with one thread per core would run P×cores threads on cores
cores, and matrix products slow down instead of speeding up. The share is
``max(1, cores // P)``. Environment variables (read when a BLAS library loads) cover workers
started with spawn; a worker forked from a parent that already loaded NumPy's OpenBLAS is
capped at run time through threadpoolctl when it is installed, else through OpenBLAS's own
``set_num_threads`` found in the process's loaded libraries.
"""

from __future__ import annotations

import ctypes
import os

from ..backend import cpu_count

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "openblas_get_num_threads64_", "openblas_get_num_threads")


def cores() -> int:
    """Cores this process may run on."""
    return cpu_count()


def share(world_size: int, blas_threads: int | None = None) -> int:
    """Threads per worker: ``blas_threads`` if given, else ``max(1, cores // world_size)``."""
    if blas_threads is not None:
        if int(blas_threads) < 1:
            raise ValueError(f"blas_threads must be >= 1, not {blas_threads}")
        return int(blas_threads)
    return max(1, cores() // max(1, world_size))


def core_sets(world_size: int, pin: bool | None = None) -> tuple:
    """Disjoint core sets, one per rank (``cores // world_size`` each), or () for no pinning.
    By default workers are pinned when each can have a core of its own (2 <= P <= cores)."""
    try:
        available = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return ()
    if pin is None:
        pin = 2 <= world_size <= len(available)
    if not pin or world_size > len(available):
        return ()
    k = len(available) // world_size
    return tuple(frozenset(available[r * k:(r + 1) * k]) for r in range(world_size))


def thread_env(threads: int) -> dict:
    return {var: str(threads) for var in THREAD_VARS}


_LIB = []  # the OpenBLAS handle, once found (inherited by forked workers)


def _openblas():
    if _LIB:
        return _LIB[0]
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            _LIB.append(ctypes.CDLL(path))
            return _LIB[0]
        except OSError:
            continue
    return None


def prepare() -> None:
    """Find the BLAS library in the launcher, so that forked workers need not search."""
    if "numpy" in __import__("sys").modules:
        _openblas()


def limit_threads(threads: int) -> None:
    """Cap BLAS threads in this (already running) process."""
    os.environ.update(thread_env(threads))
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads)
        return
    except ImportError:
        pass
    lib = _openblas()
    for name in _SETTERS if lib is not None else ():
        if hasattr(lib, name):
            getattr(lib, name)(ctypes.c_int(threads))
            return


def current_threads() -> int | None:
    """OpenBLAS's thread count in this process (None when it cannot be asked)."""
    lib = _openblas()
    for name in _GETTERS if lib is not None else ():
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            return int(fn())
    return None
