"""``LocalComm``: the communicator of a job of one process.

With P = 1 every collective is the identity: the sum over one rank is that rank's array, the
only block of a reduce-scatter or an all-gather is the whole array, a broadcast has no one to
reach. So one process runs the same training code as P workers, through the same protocol,
and its counters and timeline hooks still see every call (with 0 bytes sent).
"""

from __future__ import annotations

import numpy as np

from .base import Communicator


class LocalComm(Communicator):
    """Rank 0 of a world of one: collectives return their input's values, moving nothing."""

    backend_name = "local"

    def __init__(self):
        super().__init__(0, 1)

    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        self.check_op(op)
        with self._timed("allreduce", 0, 0):
            return x  # op over one rank, in place: x itself (mean divides by 1)

    def reduce_scatter(self, x, op: str = "sum"):
        self.check_op(op)
        with self._timed("reduce_scatter", 0, 0):
            return x.copy()

    def allgather(self, x):
        with self._timed("allgather", 0, 0):
            return x.reshape((1,)).copy() if x.ndim == 0 else x.copy()

    def broadcast(self, x, root: int = 0):
        self.check_peer(root, "broadcast")
        with self._timed("broadcast", 0, 0):
            return x

    def send(self, x, dst: int) -> None:
        self.check_peer(dst, "send")  # always raises: there is no peer

    def recv(self, x, src: int):
        self.check_peer(src, "recv")  # always raises: there is no peer

    def barrier(self) -> None:
        with self._timed("barrier", 0, 0):
            pass

    def split(self, color: int, key: int | None = None):
        return None if color is None else LocalComm()

    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype=dtype)
