"""The one place that decides which array library holds the numbers.

Everything else in minilepton works on "arrays" and asks this module which namespace
(``numpy`` or ``cupy``) an array belongs to, so the autograd, nn, optim and training code run
unchanged on a CPU or a GPU. NumPy is always there; CuPy is optional (extra ``[gpu]``) and is
imported only when a GPU is asked for, never at import time, so a launcher process that never
touches a GPU never initialises CUDA (workers may then be forked safely). A launcher that must
know whether its workers will use a GPU asks ``probe_gpu_count`` / ``resolve_device_in_launcher``,
which look from a child process, so CUDA is still never initialised in the launcher; workers
that use a GPU are started with ``spawn`` (``start_method_for``), because CUDA does not survive
``fork``.

Devices: ``"cpu"`` (NumPy), ``"gpu"`` (CuPy; an error if CuPy or a GPU is missing) and
``"auto"`` (the GPU when one is usable, else the CPU, saying so once).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys

import ml_dtypes
import numpy as np

log = logging.getLogger(__name__)

DEVICES = ("cpu", "gpu", "auto")
BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # NumPy has no bfloat16; ml_dtypes (JAX's) provides it
_default_dtype = np.dtype(np.float32)
_cupy = None  # the cupy module once a GPU has been asked for
_said_auto_is_cpu = False  # "--device auto: ... using the CPU" is said once per process


class DeviceError(RuntimeError):
    """A device was asked for that this machine cannot give, or arrays of two devices met.

    ``reason``: the cause alone (no advice), for messages such as ``--device auto``'s."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def default_dtype() -> np.dtype:
    """The floating dtype new tensors get (float32 unless changed)."""
    return _default_dtype


def is_floating(dtype) -> bool:
    """float16, float32, float64, and bfloat16 (whose NumPy ``kind`` is ``"V"``, not ``"f"``)."""
    return dtype.kind == "f" or dtype == BFLOAT16


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
        import cupy  # optional, and must not be imported before it is wanted
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        why = f"{exc.__class__.__name__}: {exc}"
        raise DeviceError(f"--device gpu needs CuPy (pip install 'minilepton[gpu]'): {why}",
                          reason=f"CuPy does not import: {why}") from None
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
    try:
        _import_cupy()
        return "gpu"
    except DeviceError as exc:
        _say_auto_is_cpu(exc.reason)
        return "cpu"


def _say_auto_is_cpu(reason: str) -> None:
    global _said_auto_is_cpu
    if not _said_auto_is_cpu:
        _said_auto_is_cpu = True
        log.warning("--device auto: no usable GPU (%s); using the CPU", reason)


def namespace(device: str = "cpu"):
    """The array module for a resolved device: ``numpy`` or ``cupy``."""
    return _import_cupy() if device == "gpu" else np


def xp_of(array):
    """The array module that owns ``array`` (numpy for NumPy arrays and scalars, else cupy)."""
    if type(array) is np.ndarray:
        return np
    if _cupy is None:
        if not type(array).__module__.startswith("cupy"):
            return np
        _import_cupy()  # a CuPy array made before minilepton was asked for a GPU
    return _cupy if isinstance(array, _cupy.ndarray) else np


def device_of(array) -> str:
    """``"gpu"`` for a CuPy array, else ``"cpu"``."""
    return "cpu" if xp_of(array) is np else "gpu"


def to_device(array, device: str):
    """Copy ``array`` to ``device`` (``"cpu"`` or ``"gpu"``; a no-op when it is already there)."""
    if device == "gpu":
        cp = _import_cupy()
        return cp.asarray(array)
    if device != "cpu":
        raise DeviceError(f"to_device needs 'cpu' or 'gpu' (resolve {device!r} first)")
    return to_numpy(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy array with the same values (copies from the GPU when needed)."""
    if type(array) is np.ndarray:
        return array
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def set_gpu_for_local_rank(local_rank: int) -> int:
    """Select GPU ``local_rank % visible_gpus`` for this process and return its index.

    Several workers may share one GPU (4 workers on 2 GPUs: 0, 1, 0, 1). Call it in the worker,
    before any array is put on the GPU: arrays live on the device that was current when made.
    """
    if int(local_rank) != local_rank or local_rank < 0:
        raise ValueError(f"local_rank must be a non-negative integer, not {local_rank!r}")
    cp = _import_cupy()
    index = int(local_rank) % cp.cuda.runtime.getDeviceCount()
    cp.cuda.Device(index).use()
    return index


def gpu_initialised() -> bool:
    """True once this process has imported CuPy through this module (CUDA may be live)."""
    return _cupy is not None


def synchronize() -> None:
    """Wait for every queued GPU kernel of this process (no-op without a GPU); call it before
    reading a clock, since GPU work is asynchronous."""
    if _cupy is not None:
        _cupy.cuda.get_current_stream().synchronize()


def scatter_add(target, index, values) -> None:
    """``target[index] += values`` in place, repeated indices adding up (``np.add.at``).

    CuPy spells it ``cupyx.scatter_add`` (older CuPy has no ``ufunc.at``)."""
    if xp_of(target) is np:
        np.add.at(target, index, values)
        return
    import cupyx  # present whenever cupy is
    cupyx.scatter_add(target, index, values)


def check_same_device(*arrays, what: str = "an operation") -> str:
    """The device all ``arrays`` live on; DeviceError when CPU and GPU arrays are mixed."""
    devices = {device_of(a) for a in arrays}
    if len(devices) > 1:
        raise DeviceError(f"{what} mixes CPU and GPU arrays; move both to one device first "
                          "(Module.to(device), ml.backend.to_device(array, device))")
    return devices.pop() if devices else "cpu"


_PROBE = ("import cupy; n = cupy.cuda.runtime.getDeviceCount(); "
          "print(n, cupy.__version__, cupy.cuda.runtime.runtimeGetVersion())")


def probe_gpu_count(timeout_s: float = 120.0) -> tuple[int, str]:
    """``(number of visible GPUs, reason)`` found by a child Python, so CUDA stays out of here.

    ``reason`` says what was found (or why none): use it in messages. Never raises.
    """
    if _cupy is not None:  # this process already uses CUDA: asking again costs nothing
        return _cupy.cuda.runtime.getDeviceCount(), "CuPy already initialised in this process"
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 0, f"the GPU probe failed: {exc}"
    if done.returncode != 0:
        lines = (done.stderr.strip() or "no output").splitlines()
        if "No module named 'cupy'" in done.stderr:
            return 0, "CuPy is not installed (pip install 'minilepton[gpu]')"
        return 0, f"CuPy cannot use a GPU: {lines[-1]}"
    n, version, runtime = done.stdout.split()
    return int(n), f"{n} GPU(s) visible to CuPy {version} (CUDA runtime {runtime})"


def resolve_device_in_launcher(device: str = "cpu") -> str:
    """``resolve_device`` for a process that starts workers: the same answer, without CUDA.

    ``gpu`` with no usable GPU raises DeviceError; ``auto`` falls back to the CPU, saying so.
    """
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    n, reason = probe_gpu_count()
    if n > 0:
        return "gpu"
    if device == "gpu":
        raise DeviceError(f"--device gpu: no usable GPU ({reason})")
    _say_auto_is_cpu(reason)
    return "cpu"


def start_method_for(device: str) -> str:
    """The multiprocessing start method for workers on a resolved ``device``: ``spawn`` for
    ``gpu`` (a forked child cannot use its parent's CUDA context), else ``fork``."""
    if device not in ("cpu", "gpu"):
        raise DeviceError(f"start_method_for needs 'cpu' or 'gpu' (resolve {device!r} first)")
    return "spawn" if device == "gpu" else "fork"


def cpu_count() -> int:
    """Cores this process may run on (respects CPU affinity and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The processor's name, as ``/proc/cpuinfo`` gives it (for the records benchmarks write)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
