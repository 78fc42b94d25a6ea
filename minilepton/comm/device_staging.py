"""Collectives on GPU arrays, staged through host memory: device -> host arena -> device.

The shared-memory and MPI backends move NumPy arrays. A worker that trains on a GPU wraps its
communicator in ``DeviceStagingComm``: a collective on a CuPy array copies it into a host
buffer taken from the wrapped communicator's arena (``comm.zeros``, so the host side is the
backends' fast path), runs the wrapped collective on that buffer, and copies the result back:

    allreduce on the GPU:  x_host ← x_gpu  (D2H);  allreduce(x_host);  x_gpu ← x_host  (H2D)

Every copy is counted and timed (``staging``: copies, bytes and seconds in each direction), so
a learner can see what a GPU without a direct GPU-to-GPU link pays per step. NumPy arrays pass
straight through, uncopied. Host buffers are kept per (dtype, element count) and reused. The
arena ones are allocated collectively (every rank of the group calls ``comm.zeros`` in the same
order, which holds because every rank makes the same collectives); point-to-point copies use
private buffers instead, since only two ranks take part, and rely on the wrapped ``send``
returning only once its buffer may be reused (a blocking send, as in both backends). A direct
NCCL path would skip both copies; this staged path works on any number of GPUs, including
several workers sharing one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .. import backend
from .base import Communicator
from .shm.arena import ArenaFullError


@dataclass
class StagingStats:
    """Copies between the GPU and host memory made by one rank's collectives."""

    d2h_copies: int = 0
    d2h_bytes: int = 0
    d2h_seconds: float = 0.0
    h2d_copies: int = 0
    h2d_bytes: int = 0
    h2d_seconds: float = 0.0

    def record(self, direction: str, nbytes: int, seconds: float) -> None:
        """One copy ``direction`` (``"d2h"`` or ``"h2d"``) of ``nbytes`` took ``seconds``."""
        setattr(self, f"{direction}_copies", getattr(self, f"{direction}_copies") + 1)
        setattr(self, f"{direction}_bytes", getattr(self, f"{direction}_bytes") + int(nbytes))
        setattr(self, f"{direction}_seconds", getattr(self, f"{direction}_seconds") + seconds)

    def reset(self) -> None:
        self.__init__()

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class DeviceStagingComm(Communicator):
    """A Communicator over GPU arrays that delegates to ``inner`` (any Communicator).

    ``rank``, ``world_size``, ``stats`` (bytes between ranks) and ``hooks`` are the inner
    communicator's; ``staging`` counts the device <-> host copies this wrapper adds, and the
    hooks also see them as operations ``"stage_d2h"`` and ``"stage_h2d"``.
    """

    backend_name = "device-staging"

    def __init__(self, inner: Communicator):
        if isinstance(inner, DeviceStagingComm):
            raise TypeError("this communicator is already staged through the host")
        self.inner = inner
        self.rank = inner.rank
        self.world_size = inner.world_size
        self.stats = inner.stats
        self.hooks = inner.hooks
        self.staging = StagingStats()
        self._buffers: dict = {}  # (shared?, dtype str, element count) -> flat host array

    # ---- the copies
    def _host_buffer(self, x, shared: bool = True) -> np.ndarray:
        """A host array of x's shape and dtype, reused across calls: from the arena for a
        collective (``shared``; every rank allocates it), private for a send or a recv."""
        n, dtype = int(x.size), np.dtype(x.dtype)
        key = (shared, dtype.str, n)
        flat = self._buffers.get(key)
        if flat is None:
            try:
                flat = self.inner.zeros((n,), dtype) if shared else np.empty(n, dtype)
            except ArenaFullError:  # raised on every rank alike: all fall back together
                flat = np.empty(n, dtype)
            self._buffers[key] = flat
        return flat.reshape(x.shape)

    def _fire(self, event: str, op: str, t_s: float, nbytes: int) -> None:
        for hook in self.hooks:
            hook(event, op, self.rank, t_s, nbytes)

    def _to_host(self, x, shared: bool = True) -> np.ndarray:
        """D2H: x (on the GPU) copied into its host buffer, timed once queued work is done."""
        host = self._host_buffer(x, shared)
        backend.synchronize()  # the kernels that produced x are not part of the copy
        t0 = time.perf_counter()
        self._fire("start", "stage_d2h", t0, x.nbytes)
        x.get(out=host)
        t1 = time.perf_counter()
        self._fire("end", "stage_d2h", t1, x.nbytes)
        self.staging.record("d2h", x.nbytes, t1 - t0)
        return host

    def _to_device(self, host: np.ndarray, out=None):
        """H2D: host copied into ``out`` (in place) or into a new GPU array; returns it."""
        t0 = time.perf_counter()
        self._fire("start", "stage_h2d", t0, host.nbytes)
        if out is None:
            out = backend.to_device(host, "gpu")
        else:
            out.set(host.reshape(out.shape))
        backend.synchronize()
        t1 = time.perf_counter()
        self._fire("end", "stage_h2d", t1, host.nbytes)
        self.staging.record("h2d", host.nbytes, t1 - t0)
        return out

    @staticmethod
    def _on_gpu(x, what: str) -> bool:
        if backend.device_of(x) == "cpu":
            return False
        if not x.flags.c_contiguous:
            raise ValueError(f"{what} needs a C-contiguous array (use cupy.ascontiguousarray)")
        return True

    # ---- the protocol
    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        kwargs = {} if algorithm is None else {"algorithm": algorithm}
        if not self._on_gpu(x, "allreduce"):
            return self.inner.allreduce(x, op, **kwargs)
        self.check_op(op)
        host = self._to_host(x)
        self.inner.allreduce(host, op, **kwargs)
        return self._to_device(host, out=x)

    def reduce_scatter(self, x, op: str = "sum"):
        if not self._on_gpu(x, "reduce_scatter"):
            return self.inner.reduce_scatter(x, op)
        self.check_op(op)
        return self._to_device(self.inner.reduce_scatter(self._to_host(x), op))

    def allgather(self, x):
        if not self._on_gpu(x, "allgather"):
            return self.inner.allgather(x)
        return self._to_device(self.inner.allgather(self._to_host(x)))

    def broadcast(self, x, root: int = 0):
        if not self._on_gpu(x, "broadcast"):
            return self.inner.broadcast(x, root)
        # every rank copies: non-roots need a buffer to receive into and the H2D afterwards
        host = self._to_host(x) if self.rank == root else self._host_buffer(x)
        self.inner.broadcast(host, root)
        return x if self.rank == root else self._to_device(host, out=x)

    def send(self, x, dst: int) -> None:
        if not self._on_gpu(x, "send"):
            return self.inner.send(x, dst)
        self.inner.send(self._to_host(x, shared=False), dst)

    def recv(self, x, src: int):
        if not self._on_gpu(x, "recv"):
            return self.inner.recv(x, src)
        host = self._host_buffer(x, shared=False)
        self.inner.recv(host, src)
        return self._to_device(host, out=x)

    def barrier(self) -> None:
        self.inner.barrier()

    def split(self, color: int, key: int | None = None) -> DeviceStagingComm:
        return DeviceStagingComm(self.inner.split(color, key))

    def zeros(self, shape, dtype=np.float32):
        """A zeroed GPU array: buffers (gradient buckets) live next to the parameters."""
        return backend.namespace("gpu").zeros(shape, dtype=dtype)

    def close(self) -> None:
        self._buffers.clear()
        self.inner.close()

    def __getattr__(self, name):  # backend-specific extras (e.g. an arena's name) of the inner
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self):
        return f"<DeviceStagingComm over {self.inner!r}>"


def wrap_for_device(comm: Communicator, device: str) -> Communicator:
    """``comm`` ready for arrays on ``device`` (``cpu|gpu|auto``): itself on the CPU, staged
    through the host (``DeviceStagingComm``) on a GPU. Call it in the worker, after
    ``backend.set_gpu_for_local_rank``."""
    if backend.resolve_device(device) == "cpu" or isinstance(comm, DeviceStagingComm):
        return comm
    return DeviceStagingComm(comm)
