"""The Communicator protocol on MPI (mpi4py), for jobs started by ``mpiexec``.

Every rank of an MPI job is one worker. Arrays move as raw bytes through MPI buffers (``Send``,
``Alltoallv``, ``Allgatherv``, ``Bcast``), never pickled; every reduction is done here in NumPy,
so the bits do not depend on which algorithm the MPI library picks.

All-reduce algorithms (``allreduce(x, op, algorithm=...)``):

- ``"ordered"`` (default): y = ((x₀ ⊕ x₁) ⊕ x₂) … ⊕ x_{P−1}, in rank order, the same bits on every
  rank, run after run, and the same bits as the shared-memory backend. Cut x into P blocks;
  ``Alltoallv`` hands rank r every rank's copy of block r, rank r folds them in rank order with
  chained ``np.add(out=)``, and ``Allgatherv`` returns the reduced blocks to everyone. Cost: each
  rank sends 2(P−1)/P · N bytes (as a ring does) in two MPI collectives, plus one pass over an
  N-byte scratch buffer. Below ``small_bytes`` one ``Allgather`` of the whole array (sending
  (P−1) · N bytes) and a local fold are cheaper, with identical bits.
- ``"native"``: ``MPI_Allreduce``, the fastest, but the order of the sum is the library's (it
  may change with P, the size or the MPI version); bits can differ from the other algorithms.
- ``"ring"``: the teaching ring over ``Sendrecv``: P−1 reduce-scatter steps then P−1 all-gather
  steps, each moving one block of N/P to the right neighbour, 2(P−1)/P · N bytes per rank. Block
  b is summed in the ring's cyclic order b, b+1, …, b−1 (mod P), so it equals ``"ordered"``
  bitwise for P ≤ 2 and is fixed and identical on every rank for any P (see ``ring_order``).

Counters record what this rank sends in the algorithm's own model; for ``native`` they record
the bandwidth-optimal 2(P−1)/P · N bytes in 2(P−1) messages (what MPI really sends is hidden).
"""

from __future__ import annotations

import numpy as np

from .base import Communicator, CommError

ALGORITHMS = ("ordered", "native", "ring")
_FOLD = {"sum": np.add, "mean": np.add, "max": np.maximum}


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
                 _owned: bool = False):
        MPI = _mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())
        self.algorithm = self._check_algorithm(algorithm)
        self.small_bytes = int(small_bytes)
        self._owned = _owned
        self._scratch = np.empty(0, np.uint8)

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

    # ---- all-reduce
    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        self.check_op(op)
        self._check_inplace(x, "allreduce")
        algorithm = self.algorithm if algorithm is None else self._check_algorithm(algorithm)
        P, n = self.world_size, x.size
        if P == 1 or n == 0:
            with self._timed("allreduce", 0, 0):
                pass
        elif algorithm == "native":
            with self._timed("allreduce", 2 * (P - 1) * x.nbytes // P, 2 * (P - 1)):
                self._native(x, op)
        elif algorithm == "ring":
            self._ring(x, op)
        elif x.nbytes <= self.small_bytes:
            with self._timed("allreduce", (P - 1) * x.nbytes, P - 1):
                self._gather_fold(x, op)
        else:
            self._scatter_fold_gather(x, op)
        if op == "mean" and P > 1:
            np.divide(x, P, out=x, casting="unsafe")
        return x

    def _native(self, x, op):
        MPI = _mpi()
        try:
            self.comm.Allreduce(MPI.IN_PLACE, x, op=MPI.MAX if op == "max" else MPI.SUM)
        except (KeyError, TypeError, ValueError) as exc:  # a dtype with no MPI datatype
            raise CommError(f"allreduce(algorithm='native') cannot reduce {x.dtype}: {exc}") \
                from None

    def _gather_fold(self, x, op):
        """One Allgather of the whole array, then every rank folds the P copies in rank order."""
        P, flat = self.world_size, x.reshape(-1)
        rows = self._scratch_bytes(P * x.nbytes).view(x.dtype).reshape(P, -1)
        self.comm.Allgather(_bytes(x), rows.view(np.uint8))
        _fold(list(rows), flat, _FOLD[op])

    def _scatter_fold_gather(self, x, op):
        """Alltoallv (block r of every rank to rank r), fold in rank order, Allgatherv."""
        MPI, P, r, size = _mpi(), self.world_size, self.rank, x.itemsize
        bounds = block_bounds(x.size, P)
        counts = np.diff(bounds) * size
        displs = bounds[:-1] * size
        mine = int(counts[r])
        sent = (x.nbytes - mine) + (P - 1) * mine
        with self._timed("allreduce", sent, 2 * (P - 1)):
            flat, raw = x.reshape(-1), _bytes(x)
            inbox = self._scratch_bytes(P * mine)
            recv_counts = np.full(P, mine, np.int64)
            recv_displs = np.arange(P, dtype=np.int64) * mine
            self.comm.Alltoallv([raw, counts, displs, MPI.BYTE],
                                [inbox, recv_counts, recv_displs, MPI.BYTE])
            rows = inbox.view(x.dtype).reshape(P, -1)
            _fold(list(rows), flat[bounds[r]:bounds[r + 1]], _FOLD[op])
            self.comm.Allgatherv(MPI.IN_PLACE, [raw, counts, displs, MPI.BYTE])

    def _ring(self, x, op):
        """Reduce-scatter then all-gather around the ring r → r+1, one block per step."""
        P, r = self.world_size, self.rank
        right, left = (r + 1) % P, (r - 1) % P
        flat, bounds, ufunc = x.reshape(-1), block_bounds(x.size, P), _FOLD[op]
        blocks = [flat[bounds[b]:bounds[b + 1]] for b in range(P)]
        sizes = [blk.nbytes for blk in blocks]
        sent = sum(sizes[(r - s) % P] for s in range(P - 1))
        sent += sum(sizes[(r + 1 - s) % P] for s in range(P - 1))
        with self._timed("allreduce", sent, 2 * (P - 1)):
            tmp = self._scratch_bytes(max(sizes)).view(x.dtype)
            for s in range(P - 1):  # after step s, rank r's block r-s-1 holds s+2 ranks' data
                out_b, in_b = (r - s) % P, (r - s - 1) % P
                got = tmp[:blocks[in_b].size]
                self.comm.Sendrecv(_bytes(blocks[out_b]), dest=right,
                                   recvbuf=got.view(np.uint8), source=left)
                ufunc(got, blocks[in_b], out=blocks[in_b])
            for s in range(P - 1):  # rank r now owns the full block r+1; pass them around
                out_b, in_b = (r + 1 - s) % P, (r - s) % P
                self.comm.Sendrecv(_bytes(blocks[out_b]), dest=right,
                                   recvbuf=_bytes(blocks[in_b]), source=left)

    # ---- the other collectives
    def reduce_scatter(self, x, op: str = "sum"):
        self.check_op(op)
        self.check_array(x, "reduce_scatter")
        P = self.world_size
        if x.ndim == 0 or x.shape[0] % P:
            raise ValueError(f"reduce_scatter needs axis 0 divisible by {P} ranks, "
                             f"got shape {x.shape}")
        out = np.empty((x.shape[0] // P,) + x.shape[1:], x.dtype)
        with self._timed("reduce_scatter", (P - 1) * out.nbytes, P - 1):
            if P == 1:
                np.copyto(out, x)
            else:
                inbox = self._scratch_bytes(P * out.nbytes)
                self.comm.Alltoall(_bytes(x), inbox)
                _fold(list(inbox.view(x.dtype).reshape((P,) + out.shape)), out, _FOLD[op])
        if op == "mean" and P > 1:
            np.divide(out, P, out=out, casting="unsafe")
        return out

    def allgather(self, x):
        self.check_array(x, "allgather")
        P = self.world_size
        shape = (P * x.shape[0],) + x.shape[1:] if x.ndim else (P,)
        out = np.empty(shape, x.dtype)
        with self._timed("allgather", (P - 1) * x.nbytes, P - 1):
            self.comm.Allgather(_bytes(x), _bytes(out))
        return out

    def broadcast(self, x, root: int = 0):
        self.check_peer(root, "broadcast")
        P = self.world_size
        if self.rank == root:
            self.check_array(x, "broadcast")
        else:
            self._check_inplace(x, "broadcast")
        nbytes, messages = ((P - 1) * x.nbytes, P - 1) if self.rank == root else (0, 0)
        with self._timed("broadcast", nbytes, messages):
            self.comm.Bcast(_bytes(x), root=root)
        return x

    def send(self, x, dst: int) -> None:
        dst = self.check_peer(dst, "send")
        self.check_array(x, "send")
        with self._timed("send", x.nbytes, 1):
            self.comm.Send(_bytes(x), dest=dst)

    def recv(self, x, src: int):
        src = self.check_peer(src, "recv")
        self._check_inplace(x, "recv")
        MPI = _mpi()
        with self._timed("recv", 0, 0):
            status = MPI.Status()
            self.comm.Recv(_bytes(x), source=src, status=status)
        got = status.Get_count(MPI.BYTE)
        if got != x.nbytes:
            raise CommError(f"recv from rank {src}: got {got} bytes into a {x.nbytes}-byte array")
        return x

    def barrier(self) -> None:
        with self._timed("barrier", 0, 0):
            self.comm.Barrier()

    def split(self, color: int, key: int | None = None) -> "MPICommunicator":
        if int(color) < 0:
            raise ValueError(f"split: color must be a non-negative int, got {color}")
        key = self.rank if key is None else int(key)
        with self._timed("split", 0, 0):
            sub = self.comm.Split(int(color), key)
        return MPICommunicator(sub, self.algorithm, self.small_bytes, _owned=True)

    def close(self) -> None:
        if self._owned and self.comm is not None:
            self.comm.Free()
            self.comm = None
            self._owned = False
