"""The Communicator protocol on MPI (mpi4py), for jobs started by ``mpiexec``.

Every rank of an MPI job is one worker. Arrays move as raw bytes through MPI buffers, never
pickled; every reduction is done here in NumPy, so the bits do not depend on which algorithm the
MPI library picks. Operations are nonblocking MPI calls polled until done, so that a stalled or
dead peer makes a collective fail with ``CommError`` after ``timeout_s`` instead of hanging.

All-reduce algorithms (``allreduce(x, op, algorithm=...)``):

- ``"ordered"`` (default): y = ((x₀ ⊕ x₁) ⊕ x₂) … ⊕ x_{P−1}, in rank order, the same bits on every
  rank, run after run, and the same bits as the shared-memory backend. Cut x into P blocks;
  every rank sends block q to rank q, rank r folds the P copies of block r in rank order with
  chained ``np.add(out=)``, then sends the reduced block to every other rank. Cost: each rank
  sends 2(P−1)/P · N bytes (as a ring does), in 2(P−1) messages that all travel at once, and
  receives (P−1)/P · N bytes into a scratch buffer before folding. Up to ``small_bytes`` every
  rank sends its whole array to every other instead ((P−1) · N bytes, one round of messages),
  with identical bits. (Pairwise messages measured faster here than MPICH's ``Alltoallv``.)
- ``"native"``: ``MPI_Iallreduce``, the fastest, but the order of the sum is the library's (it
  may change with P, the size or the MPI version); bits can differ from the other algorithms.
- ``"ring"``: the teaching ring over point-to-point messages: P−1 reduce-scatter steps then P−1
  all-gather steps, each sending one block of N/P to the right neighbour, 2(P−1)/P · N bytes per
  rank. Block b is summed in the ring's cyclic order b, b+1, …, b−1 (mod P): fixed, the same on
  every rank, equal to ``"ordered"`` for P ≤ 2, and to the shared-memory ring for every P.

Counters record what this rank sends in the algorithm's own model; for ``native`` they record
the bandwidth-optimal 2(P−1)/P · N bytes in 2(P−1) messages (what MPI really sends is hidden).
``send`` copies the message and returns at once (the copy is sent in the background), so a
rank may post several messages before its peer receives any, as with the shm channels.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from .base import CommError, Communicator
from .shm_sync import SPIN_POLLS, _yield, timeout_default

log = logging.getLogger(__name__)

ALGORITHMS = ("ordered", "native", "ring")
_FOLD = {"sum": np.add, "mean": np.add, "max": np.maximum}
# message tags: internal messages never match a user's send/recv, nor each other
_USER_TAG, _RING_TAG, _SMALL_TAG, _SCATTER_TAG, _GATHER_TAG = range(5)
_SPIN_S = 1.0                 # poll without sleeping this long (MPI only progresses in calls)


def _mpi():
    try:
        from mpi4py import MPI  # noqa: PLC0415 - optional dependency, extra [mpi]
    except ImportError as exc:
        raise CommError(f"the MPI backend needs mpi4py (pip install 'minilepton[mpi]'): {exc}") \
            from None
    return MPI


def ring_order(block: int, world_size: int) -> list[int]:
    """The ranks, in summation order, whose copies of ``block`` the ring adds up."""
    return [(block + k) % world_size for k in range(world_size)]


def block_bounds(n: int, world_size: int) -> np.ndarray:
    """Element offsets of the P blocks of an n-element array: block r is [b[r], b[r+1])."""
    return (np.arange(world_size + 1, dtype=np.int64) * n) // world_size


def _bytes(x: np.ndarray) -> np.ndarray:
    """The same memory seen as a flat byte array (x must be C-contiguous)."""
    return x.reshape(-1).view(np.uint8)


def _fold_into_own(rows, r, ufunc) -> None:
    """rows[r] = ((rows[0] ⊕ rows[1]) ⊕ …) ⊕ rows[P−1] without copying rows[r] first: the ranks
    before r are summed in rows[0] (a received copy, free once read), then into rows[r] itself."""
    own = rows[r]
    if r >= 2:
        _fold(rows[:r], rows[0], ufunc)
        ufunc(rows[0], own, out=own)
    elif len(rows) > 1:
        ufunc(rows[0], rows[1], out=own)
    for row in rows[max(r + 1, 2):]:
        ufunc(own, row, out=own)


def _fold(rows, out, ufunc) -> np.ndarray:
    """out = ((rows[0] ⊕ rows[1]) ⊕ rows[2]) …, left to right, chained in place."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return out
    ufunc(rows[0], rows[1], out=out)
    for row in rows[2:]:
        ufunc(out, row, out=out)
    return out


class MPICommunicator(Communicator):
    """A communicator over an ``mpi4py`` intracommunicator (COMM_WORLD or a split of it)."""

    backend_name = "mpi"

    def __init__(self, comm=None, algorithm: str = "ordered", small_bytes: int = 32 << 10,
                 timeout_s: float | None = None, _owned: bool = False):
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
        self.verbose = os.environ.get("MINILEPTON_VERBOSE", "0") not in ("", "0")

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

    @staticmethod
    def _check_mean(x, op) -> None:
        if op == "mean" and x.dtype.kind != "f":
            raise ValueError(f"op='mean' needs a floating array, not {x.dtype}")

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
            waited_s = time.monotonic() - t_start
            if waited_s > self.timeout_s:
                raise CommError(f"{what} on rank {self.rank}: peers did not complete it within "
                                f"{self.timeout_s:g} s (a rank stalled or died); raise "
                                "MINILEPTON_COMM_TIMEOUT_S if they are just slow")
            if waited_s < _SPIN_S:
                _yield()
            else:
                time.sleep(1e-3)

    # ---- all-reduce
    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        self.check_op(op)
        self._check_inplace(x, "allreduce")
        self._check_mean(x, op)
        algorithm = self.algorithm if algorithm is None else self._check_algorithm(algorithm)
        P = self.world_size
        ring = (2 * (P - 1), 2 * (P - 1) * x.nbytes // P)  # the link model's critical path
        if self.verbose:
            small = algorithm == "ordered" and x.nbytes <= self.small_bytes
            self._say(f"allreduce {op} {x.nbytes} B {x.dtype}{x.shape} {algorithm}"
                      + (" (whole arrays to every rank)" if small else ""))
        if P == 1:
            with self._timed("allreduce", 0, 0):
                pass
        elif algorithm == "native":
            with self._timed("allreduce", ring[1], ring[0], critical=ring):
                self._native(x, op)
        elif algorithm == "ring":
            self._ring(x, op, ring)
        elif x.nbytes <= self.small_bytes:
            with self._timed("allreduce", (P - 1) * x.nbytes, P - 1, critical=ring):
                self._gather_fold(x, op)
        else:
            self._scatter_fold_gather(x, op, ring)
        if op == "mean" and P > 1:
            np.divide(x, P, out=x)
        return x

    def _native(self, x, op):
        MPI = self.MPI
        try:
            req = self.comm.Iallreduce(MPI.IN_PLACE, x, op=MPI.MAX if op == "max" else MPI.SUM)
        except (KeyError, TypeError, ValueError) as exc:  # a dtype with no MPI datatype
            raise CommError(f"allreduce(algorithm='native') cannot reduce {x.dtype}: {exc}") \
                from None
        self._wait([req], "allreduce")

    def _gather_fold(self, x, op):
        """Every rank sends its whole array to every other; each folds the P copies in order."""
        P, r, flat = self.world_size, self.rank, x.reshape(-1)
        rows = self._scratch_bytes(P * x.nbytes).view(x.dtype).reshape(P, -1)
        peers = [(r + k) % P for k in range(1, P)]
        self._wait([self.comm.Irecv(_bytes(rows[q]), source=q, tag=_SMALL_TAG) for q in peers]
                   + [self.comm.Isend(_bytes(x), dest=q, tag=_SMALL_TAG) for q in peers],
                   "allreduce")
        _fold_into_own([flat if q == r else rows[q] for q in range(P)], r, _FOLD[op])

    def _scatter_fold_gather(self, x, op, ring):
        """Block q of every rank goes to rank q, which folds the P copies in rank order; then
        every rank sends its reduced block to every other (pairwise messages throughout)."""
        P, r = self.world_size, self.rank
        flat, bounds = x.reshape(-1), block_bounds(x.size, P)
        blocks = [flat[bounds[q]:bounds[q + 1]] for q in range(P)]
        mine, peers = blocks[r], [(r + k) % P for k in range(1, P)]
        sent = (x.nbytes - mine.nbytes) + (P - 1) * mine.nbytes
        with self._timed("allreduce", sent, 2 * (P - 1), critical=ring):
            inbox = self._scratch_bytes(P * mine.nbytes).view(x.dtype).reshape(P, -1)
            self._wait([self.comm.Irecv(_bytes(inbox[q]), source=q, tag=_SCATTER_TAG)
                        for q in peers]
                       + [self.comm.Isend(_bytes(blocks[q]), dest=q, tag=_SCATTER_TAG)
                          for q in peers], "allreduce")
            _fold_into_own([mine if q == r else inbox[q] for q in range(P)], r, _FOLD[op])
            self._wait([self.comm.Irecv(_bytes(blocks[q]), source=q, tag=_GATHER_TAG)
                        for q in peers]
                       + [self.comm.Isend(_bytes(mine), dest=q, tag=_GATHER_TAG)
                          for q in peers], "allreduce")

    def _ring(self, x, op, ring):
        """Reduce-scatter then all-gather around the ring r → r+1, one block per step."""
        P, r = self.world_size, self.rank
        right, left = (r + 1) % P, (r - 1) % P
        flat, bounds, ufunc = x.reshape(-1), block_bounds(x.size, P), _FOLD[op]
        blocks = [flat[bounds[b]:bounds[b + 1]] for b in range(P)]
        sizes = [blk.nbytes for blk in blocks]
        sent = sum(sizes[(r - s) % P] + sizes[(r + 1 - s) % P] for s in range(P - 1))
        with self._timed("allreduce", sent, 2 * (P - 1), critical=ring):
            tmp = self._scratch_bytes(max(sizes)).view(x.dtype)
            for s in range(P - 1):  # after step s, block r-s-1 here holds s+2 ranks' sum
                out_b, in_b = (r - s) % P, (r - s - 1) % P
                got = tmp[:blocks[in_b].size]
                self._sendrecv(blocks[out_b], right, got, left)
                ufunc(got, blocks[in_b], out=blocks[in_b])
            for s in range(P - 1):  # rank r now owns the whole block r+1; pass them around
                self._sendrecv(blocks[(r + 1 - s) % P], right, blocks[(r - s) % P], left)

    def _sendrecv(self, out, dst, into, src):
        requests = [self.comm.Irecv(_bytes(into), source=src, tag=_RING_TAG),
                    self.comm.Isend(_bytes(out), dest=dst, tag=_RING_TAG)]
        self._wait(requests, "allreduce (ring)")

    # ---- the other collectives
    def reduce_scatter(self, x, op: str = "sum"):
        self.check_op(op)
        self.check_array(x, "reduce_scatter")
        self._check_mean(x, op)
        P = self.world_size
        if x.ndim == 0 or x.shape[0] % P:
            raise ValueError(f"reduce_scatter needs axis 0 divisible by {P} ranks, "
                             f"got shape {x.shape}")
        out = np.empty((x.shape[0] // P,) + x.shape[1:], x.dtype)
        cost = (P - 1, (P - 1) * out.nbytes)
        with self._timed("reduce_scatter", cost[1], cost[0], critical=cost):
            inbox = self._scratch_bytes(P * out.nbytes)
            self._wait([self.comm.Ialltoall(_bytes(x), inbox)], "reduce_scatter")
            _fold(list(inbox.view(x.dtype).reshape((P,) + out.shape)), out, _FOLD[op])
        if op == "mean" and P > 1:
            np.divide(out, P, out=out)
        return out

    def allgather(self, x):
        self.check_array(x, "allgather")
        P = self.world_size
        out = np.empty((P * x.shape[0],) + x.shape[1:] if x.ndim else (P,), x.dtype)
        cost = (P - 1, (P - 1) * x.nbytes)
        with self._timed("allgather", cost[1], cost[0], critical=cost):
            self._wait([self.comm.Iallgather(_bytes(x), _bytes(out))], "allgather")
        return out

    def broadcast(self, x, root: int = 0):
        root = self.check_peer(root, "broadcast")
        self._check_inplace(x, "broadcast")
        P = self.world_size
        cost = (P - 1, (P - 1) * x.nbytes)  # a flat tree from the root; every rank waits for it
        mine = cost if self.rank == root else (0, 0)
        with self._timed("broadcast", mine[1], mine[0], critical=cost):
            self._wait([self.comm.Ibcast(_bytes(x), root=root)], "broadcast")
        return x

    def send(self, x, dst: int) -> None:
        self.check_array(x, "send")
        dst = self.check_peer(dst, "send")
        if self.verbose:
            self._say(f"send {x.nbytes} B {x.dtype}{x.shape} -> rank {dst}")
        with self._timed("send", x.nbytes, 1, critical=(1, x.nbytes)):
            self._pending = [(req, buf) for req, buf in self._pending if not req.Test()]
            copy = _bytes(x).copy()  # the caller may reuse x as soon as send returns
            self._pending.append((self.comm.Isend(copy, dest=dst, tag=_USER_TAG), copy))

    def recv(self, x, src: int):
        self._check_inplace(x, "recv")
        src = self.check_peer(src, "recv")
        status = self.MPI.Status()
        if self.verbose:
            self._say(f"recv {x.nbytes} B {x.dtype}{x.shape} <- rank {src}")
        with self._timed("recv", 0, 0):
            req = self.comm.Irecv(_bytes(x), source=src, tag=_USER_TAG)
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
                               _owned=True)

    def close(self) -> None:
        """Deliver pending sends (bounded by ``timeout_s``) and free a split's communicator."""
        if self._pending:
            requests, self._pending = [req for req, _ in self._pending], []
            self._wait(requests, "close (sends not yet received)")
        if self._owned and self.comm is not None:
            self.comm.Free()
            self.comm, self._owned = None, False
