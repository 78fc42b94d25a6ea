"""``MPICommunicator``: the Communicator protocol over an mpi4py communicator.

Arrays move as raw bytes through MPI buffers, never pickled, and every reduction is folded
here in NumPy (``allreduce``), so the bits do not depend on the MPI library. Every operation
is a nonblocking MPI call polled until done (``_wait``): a stalled or dead peer makes it fail
with ``CommError`` after ``timeout_s`` instead of hanging, naming the ranks that did not arrive
(``presence``: while it waits, a rank answers the probes of a rank that timed out). ``send``
copies the message and returns at once (the copy travels in the background), as the shm
channels do. Making a communicator over a whole job is a collective (it duplicates it once).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..base import CommError, Communicator, timeout_default, verbose_default, yield_core
from ..fold import UFUNCS, fold
from . import allreduce
from .allreduce import USER_TAG, as_bytes
from .presence import ANSWER_S, Presence

log = logging.getLogger(__name__)

ALGORITHMS = ("ordered", "native", "ring")
SPIN_POLLS = 64               # polls before the wait looks at the clock
_SPIN_S = 1.0                 # poll without sleeping this long (MPI only progresses in calls)


def _mpi():
    try:
        from mpi4py import MPI  # optional dependency, extra [mpi]
    except ImportError as exc:
        raise CommError(f"the MPI backend needs mpi4py (pip install 'minilepton[mpi]'): {exc}") \
            from None
    return MPI


class MPICommunicator(Communicator):
    """A communicator over an ``mpi4py`` intracommunicator (COMM_WORLD or a split of it)."""

    backend_name = "mpi"

    def __init__(self, comm=None, algorithm: str = "ordered", small_bytes: int = 32 << 10,
                 timeout_s: float | None = None, _owned: bool = False, _presence=None):
        self.MPI = MPI = _mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())
        self.algorithm = self._check_algorithm(algorithm)
        self.small_bytes = int(small_bytes)
        self.timeout_s = timeout_default() if timeout_s is None else float(timeout_s)
        self._owned = _owned
        self._scratch = np.empty(0, np.uint8)
        self._pending: list = []  # (request, private copy) of sends not yet delivered
        self._world_rank = MPI.COMM_WORLD.Get_rank()
        self.verbose = verbose_default()
        self.presence = Presence(MPI, self.comm) if _presence is None else _presence
        self._job_ranks = self.presence.job_ranks(self.comm)  # for naming absent ranks

    def _say(self, text: str) -> None:
        """``MINILEPTON_VERBOSE=1``: log every operation, as the shm backend does."""
        log.info("[rank %d/%d] %s", self._world_rank, self.rank, text)

    # ---- helpers
    @staticmethod
    def _check_algorithm(algorithm: str) -> str:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown MPI all-reduce algorithm {algorithm!r}; "
                             f"choose one of {', '.join(ALGORITHMS)}")
        return algorithm

    def _scratch_bytes(self, nbytes: int) -> np.ndarray:
        """A reusable byte buffer of at least ``nbytes`` (grown, never shrunk)."""
        if self._scratch.nbytes < nbytes:
            self._scratch = np.empty(nbytes, np.uint8)
        return self._scratch[:nbytes]

    def _check_inplace(self, x, what: str) -> np.ndarray:
        self.check_array(x, what)
        if not x.flags.writeable:
            raise ValueError(f"{what} works in place and needs a writeable array")
        return x

    def _wait(self, requests, what: str, statuses=None) -> None:
        """Poll until every request is done: spin, then yield the core (an oversubscribed peer
        must run), then after ``_SPIN_S`` sleep between polls; CommError after ``timeout_s``."""
        testall = self.MPI.Request.Testall
        if testall(requests, statuses):
            return
        polls, t_start = 0, time.monotonic()
        while not testall(requests, statuses):
            polls += 1
            if polls < SPIN_POLLS:
                continue
            self.presence.answer()  # a peer that timed out may be asking who is here
            waited_s = time.monotonic() - t_start
            if waited_s > self.timeout_s:
                raise CommError(self._timed_out(what))
            if waited_s < _SPIN_S:
                yield_core()
            else:
                time.sleep(1e-3)

    def _timed_out(self, what: str) -> str:
        """The CommError text of a wait that timed out, naming the ranks not waiting in MPI."""
        absent = self.presence.absent(self._job_ranks, min(ANSWER_S, self.timeout_s / 4))
        if absent:
            return (f"{what} on rank {self.rank}: rank(s) {absent} did not arrive within "
                    f"{self.timeout_s:g} s (stalled or dead); raise MINILEPTON_COMM_TIMEOUT_S "
                    "if they are just slow")
        return (f"{what} on rank {self.rank}: not done within {self.timeout_s:g} s although "
                "every rank is waiting in MPI (do all ranks call the same operations in the "
                "same order?)")

    # ---- the collectives
    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        self.check_op(op)
        self._check_inplace(x, "allreduce")
        self.check_mean_dtype(x, op)
        algorithm = self.algorithm if algorithm is None else self._check_algorithm(algorithm)
        P = self.world_size
        how = allreduce.choose(algorithm, x.nbytes, self.small_bytes)
        sent, messages = allreduce.cost(how, x, self.rank, P)
        if self.verbose:
            self._say(f"allreduce {op} {x.nbytes} B {x.dtype}{x.shape} {algorithm}"
                      + (" (whole arrays to every rank)" if how == "gather_fold" else ""))
        with self._timed("allreduce", sent, messages,
                         critical=(2 * (P - 1), 2 * (P - 1) * x.nbytes // P)):  # a ring's
            if P > 1:
                allreduce.RUN[how](self, x, op)
                if op == "mean":
                    np.divide(x, P, out=x)
        return x

    def reduce_scatter(self, x, op: str = "sum"):
        self.check_op(op)
        self.check_array(x, "reduce_scatter")
        self.check_mean_dtype(x, op)
        P = self.world_size
        if x.ndim == 0 or x.shape[0] % P:
            raise ValueError(f"reduce_scatter needs axis 0 divisible by {P} ranks, "
                             f"got shape {x.shape}")
        out = np.empty((x.shape[0] // P,) + x.shape[1:], x.dtype)
        cost = (P - 1, (P - 1) * out.nbytes)
        with self._timed("reduce_scatter", cost[1], cost[0], critical=cost):
            inbox = self._scratch_bytes(P * out.nbytes)
            self._wait([self.comm.Ialltoall(as_bytes(x), inbox)], "reduce_scatter")
            fold(out, list(inbox.view(x.dtype).reshape((P,) + out.shape)), UFUNCS[op])
        if op == "mean" and P > 1:
            np.divide(out, P, out=out)
        return out

    def allgather(self, x):
        self.check_array(x, "allgather")
        P = self.world_size
        out = np.empty((P * x.shape[0],) + x.shape[1:] if x.ndim else (P,), x.dtype)
        cost = (P - 1, (P - 1) * x.nbytes)
        with self._timed("allgather", cost[1], cost[0], critical=cost):
            self._wait([self.comm.Iallgather(as_bytes(x), as_bytes(out))], "allgather")
        return out

    def broadcast(self, x, root: int = 0):
        root = self.check_peer(root, "broadcast")
        self._check_inplace(x, "broadcast")
        P = self.world_size
        cost = (P - 1, (P - 1) * x.nbytes)  # a flat tree from the root; every rank waits for it
        mine = cost if self.rank == root else (0, 0)
        with self._timed("broadcast", mine[1], mine[0], critical=cost):
            self._wait([self.comm.Ibcast(as_bytes(x), root=root)], "broadcast")
        return x

    def send(self, x, dst: int) -> None:
        self.check_array(x, "send")
        dst = self.check_peer(dst, "send")
        if self.verbose:
            self._say(f"send {x.nbytes} B {x.dtype}{x.shape} -> rank {dst}")
        with self._timed("send", x.nbytes, 1, critical=(1, x.nbytes)):
            self._pending = [(req, buf) for req, buf in self._pending if not req.Test()]
            copy = as_bytes(x).copy()  # the caller may reuse x as soon as send returns
            self._pending.append((self.comm.Isend(copy, dest=dst, tag=USER_TAG), copy))

    def recv(self, x, src: int):
        self._check_inplace(x, "recv")
        src = self.check_peer(src, "recv")
        status = self.MPI.Status()
        if self.verbose:
            self._say(f"recv {x.nbytes} B {x.dtype}{x.shape} <- rank {src}")
        with self._timed("recv", 0, 0):
            req = self.comm.Irecv(as_bytes(x), source=src, tag=USER_TAG)
            self._wait([req], f"recv from rank {src}", [status])
        got = status.Get_count(self.MPI.BYTE)
        if got != x.nbytes:
            raise CommError(f"recv from rank {src}: got {got} bytes into a {x.nbytes}-byte array")
        return x

    def barrier(self) -> None:
        with self._timed("barrier", 0, 0):
            self._wait([self.comm.Ibarrier()], "barrier")

    def split(self, color, key: int | None = None) -> MPICommunicator | None:
        """Ranks with the same ``color`` (an int >= 0) form a group ordered by ``(key, rank)``;
        ``color=None`` joins no group and gets None."""
        if color is not None and (int(color) != color or color < 0):
            raise ValueError(f"split color must be an int >= 0 or None, not {color!r}")
        key = self.rank if key is None else int(key)
        with self._timed("split", 0, 0):
            sub = self.comm.Split(self.MPI.UNDEFINED if color is None else int(color), key)
        if color is None:
            return None
        return MPICommunicator(sub, self.algorithm, self.small_bytes, self.timeout_s,
                               _owned=True, _presence=self.presence)

    def close(self) -> None:
        """Deliver pending sends (bounded by ``timeout_s``) and free a split's communicator."""
        if self._pending:
            requests, self._pending = [req for req, _ in self._pending], []
            self._wait(requests, "close (sends not yet received)")
        if self._owned and self.comm is not None:
            self.comm.Free()
            self.comm, self._owned = None, False
