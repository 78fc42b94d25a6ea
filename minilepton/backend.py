"""The one place that decides which array library holds the numbers.

Everything else in minilepton works on "arrays" and asks this module which namespace
(``numpy`` or ``cupy``) an array belongs to, so the autograd, nn, optim and training code run
unchanged on a CPU or a GPU. NumPy is always there; CuPy is optional (extra ``[gpu]``) and is
imported only when a GPU is asked for, never at import time, so a launcher process that never
touches a GPU never initialises CUDA (workers may then be forked safely).

Devices: ``"cpu"`` (NumPy), ``"gpu"`` (CuPy; an error if CuPy or a GPU is missing) and
``"auto"`` (the GPU when one is usable, else the CPU, saying so once).
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu", "auto")
_default_dtype = np.dtype(np.float32)
_cupy = None  # the cupy module once a GPU has been asked for


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot give, or arrays of two devices met."""


def default_dtype() -> np.dtype:
    """The floating dtype new tensors get (float32 unless changed)."""
    return _default_dtype


def set_default_dtype(dtype) -> None:
    """Set the floating dtype of new tensors: ``"float32"`` or ``"float64"``."""
    global _default_dtype
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"default dtype must be float32 or float64, not {dt}")
    _default_dtype = dt


def _import_cupy():
    """Import CuPy and check that it sees a GPU; raise DeviceError with one clear line if not."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: PLC0415 - optional, and must not be imported before it is wanted
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        raise DeviceError(
            f"--device gpu needs CuPy (pip install 'minilepton[gpu]'): {exc.__class__.__name__}: {exc}"
        ) from None
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        raise DeviceError(f"CuPy is installed but no CUDA GPU is usable: {exc}") from None
    if n < 1:
        raise DeviceError("CuPy is installed but no CUDA GPU is visible")
    _cupy = cupy
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        _import_cupy()
        return True
    except DeviceError:
        return False


def resolve_device(device: str = "cpu") -> str:
    """Turn ``cpu|gpu|auto`` into ``cpu`` or ``gpu``; ``gpu`` without one raises DeviceError."""
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    if device == "gpu":
        _import_cupy()
        return "gpu"
    if gpu_available():
        return "gpu"
    log.warning("--device auto: no usable GPU (CuPy missing or no CUDA device); using the CPU")
    return "cpu"


def namespace(device: str = "cpu"):
    """The array module for a resolved device: ``numpy`` or ``cupy``."""
    return _import_cupy() if device == "gpu" else np


def xp_of(array):
    """The array module that owns ``array`` (numpy for NumPy arrays and scalars, else cupy)."""
    if type(array) is np.ndarray or _cupy is None:
        return np
    return _cupy if isinstance(array, _cupy.ndarray) else np


def device_of(array) -> str:
    """``"gpu"`` for a CuPy array, else ``"cpu"``."""
    return "cpu" if xp_of(array) is np else "gpu"


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (a no-op when it is already there)."""
    if device == "gpu":
        cp = _import_cupy()
        return cp.asarray(array)
    return to_numpy(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy array with the same values (copies from the GPU when needed)."""
    if type(array) is np.ndarray:
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def set_gpu_for_local_rank(local_rank: int) -> int:
    """Select GPU ``local_rank % visible_gpus`` for this process and return its index."""
    cp = _import_cupy()
    index = local_rank % cp.cuda.runtime.getDeviceCount()
    cp.cuda.Device(index).use()
    return index


def blas_threads_env(threads: int) -> dict[str, str]:
    """Environment variables that cap every common BLAS at ``threads`` threads."""
    n = str(max(1, int(threads)))
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
    return {name: n for name in names}


def cpu_count() -> int:
    """Cores this process may run on (respects CPU affinity and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
