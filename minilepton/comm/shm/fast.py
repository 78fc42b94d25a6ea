"""Fast paths of the shared-memory collectives: the reference's bits, sooner.

``dispatch`` picks one of these by where the array lives and its size; each gives bit for bit
what ``reference`` gives (tests/test_comm_fast_paths.py), because each folds the same values
in the same rank order, only with fewer copies, waits or Python steps.

- ``allreduce_small``: a private array that fits one staging slot: the reference's single
  step with the counting done inline (no context manager): the latency path.
- ``*_arena``: arrays made by ``comm.zeros`` (or views of them): peers' data is read where it
  lies, so nothing is copied into the staging ring. All-reduce is then a reduce-scatter and an
  all-gather in place: rank r folds chunk r of the P arrays into its own, piece by piece, and
  each peer copies a piece as soon as it is done, while it is still in r's cache.
- ``allreduce_split``: private arrays over ``split_min_bytes``: each rank stages the parts its
  peers fold, folds only its 1/P of each chunk (less work, and less traffic: benchmarks/README.md,
  "All-reduce at the memory limit"), then copies the other parts from their owners.
"""

from __future__ import annotations

import time

import numpy as np

from ..fold import UFUNCS, block_bounds, fold
from .reference import chunks
from .sync import LINE, wait_counters

BLOCK_BYTES = 256 << 10  # cache block for folds whose output is one of their inputs


def allreduce_small(comm, x, op: str):
    """``reference.allreduce`` of a private array that fits one slot, counted inline."""
    t0 = time.perf_counter()
    P, r, n = comm.world_size, comm.rank, x.size
    s = comm._step + 1
    comm._step = s
    row = comm.slots(x.dtype)[s % comm.config.stage_depth]
    flat = x if x.ndim == 1 else x.reshape(-1)
    row[r][:n] = flat
    comm._ctr[comm._me] = s
    wait_counters(comm._ctr, comm._all, s, comm.timeout_s, "allreduce", comm.members,
                  comm.spin_s)
    uf = UFUNCS[op]
    uf(row[0][:n], row[1][:n], out=flat)
    for q in range(2, P):
        uf(flat, row[q][:n], out=flat)
    if op == "mean":
        np.divide(flat, P, out=flat)
    comm.stats.record("allreduce", 2 * (P - 1) * x.nbytes // P, 2 * (P - 1),
                      time.perf_counter() - t0)
    return x


def allreduce_arena(comm, flat, ufunc, mean: bool) -> None:
    """Reduce-scatter/all-gather in place, pipelined: rank r's chunk is cut into K pieces;
    after folding piece k it advances its counter, and a peer copies that piece as soon as it
    sees the counter move. One step per piece, no barrier between the two phases; a first
    step says "inputs ready", a last one "done reading" (so no rank returns, and lets its
    caller write, while a peer still reads its array)."""
    P, r, n = comm.world_size, comm.rank, flat.size
    peers = comm.peers_of(flat)
    s0 = comm._sync("allreduce (inputs ready)")
    piece = max(comm.pipeline_bytes // flat.itemsize, 1) if comm.pipeline_bytes else n + 1
    K = max(1, -(-(n // P + 1) // piece))  # the same on every rank
    bounds = block_bounds(n, P)
    cut = [[bounds[q] + k * (bounds[q + 1] - bounds[q]) // K for k in range(K + 1)]
           for q in range(P)]
    scratch = _scratch(comm, flat.dtype)
    ctr, me, members = comm._ctr, comm._me, comm.members
    for k in range(K):
        a, b = cut[r][k], cut[r][k + 1]
        out = flat[a:b]
        fold_into(out, [p[a:b] for p in peers], ufunc, r, scratch)
        if mean:
            np.divide(out, P, out=out)
        comm._step = s0 + k + 1
        ctr[me] = s0 + k + 1
        for q in range(P):
            if q != r:
                wait_counters(ctr, [q * LINE], s0 + k + 1, comm.timeout_s,
                              "allreduce (reduced piece)", members, comm.spin_s)
                qa, qb = cut[q][k], cut[q][k + 1]
                flat[qa:qb] = peers[q][qa:qb]
    comm._sync("allreduce (done reading)")


def allreduce_split(comm, flat, ufunc, mean: bool) -> None:
    """Private arrays: the staged steps with the fold split. Rank r stages only the parts its
    peers fold (part q of each chunk for q != r: its own part r never leaves its array),
    folds part r in rank order, its own term read from ``flat``, writes the result over part
    r of its slot, and after a second step copies the other parts from their owners' slots.
    Per rank and chunk of C bytes that moves about 4C instead of the reference's 5C (P = 2)
    and does 1/P of the folding. Two waits per chunk; needs a staging ring at least 3 deep (a
    slot is still read during the step after it was written)."""
    P, r = comm.world_size, comm.rank
    scratch = _scratch(comm, flat.dtype)
    for a, L, row in chunks(comm, flat):
        cut = [q * L // P for q in range(P + 1)]
        mine = row[r]
        for q in range(P):
            if q != r:
                mine[cut[q]:cut[q + 1]] = flat[a + cut[q]:a + cut[q + 1]]
        comm._sync("allreduce (chunk staged)")
        lo, hi = cut[r], cut[r + 1]
        out = flat[a + lo:a + hi]
        fold_into(out, [out if q == r else row[q][lo:hi] for q in range(P)], ufunc, r, scratch)
        if mean:
            np.divide(out, P, out=out)
        mine[lo:hi] = out
        comm._sync("allreduce (parts reduced)")
        for q in range(P):
            if q != r:
                flat[a + cut[q]:a + cut[q + 1]] = row[q][cut[q]:cut[q + 1]]


def reduce_scatter_arena(comm, flat, out, ufunc) -> None:
    """Rank r folds block r of every peer's array where it lies."""
    P, r = comm.world_size, comm.rank
    peers = comm.peers_of(flat)
    comm._sync("reduce_scatter (inputs ready)")
    fold(out, [p.reshape(P, -1)[r] for p in peers], ufunc)
    comm._sync("reduce_scatter (done reading)")


def allgather_arena(comm, flat, rows) -> None:
    """Every rank copies every peer's array where it lies."""
    peers = comm.peers_of(flat)
    comm._sync("allgather (inputs ready)")
    for q, p in enumerate(peers):
        rows[q] = p
    comm._sync("allgather (done reading)")


def broadcast_arena(comm, flat, root: int) -> None:
    """Every rank but the root copies the root's array where it lies."""
    peers = comm.peers_of(flat)
    comm._sync("broadcast (root ready)")
    if comm.rank != root:
        flat[:] = peers[root]
    comm._sync("broadcast (done reading)")


def fold_into(out, srcs, ufunc, alias: int, scratch) -> None:
    """``fold(out, srcs)`` where ``out`` is ``srcs[alias]``: for alias >= 2 its values would be
    overwritten before they are read, so the fold runs in cache blocks through ``scratch``."""
    if len(srcs) == 2 or alias < 2:
        fold(out, srcs, ufunc)
        return
    step = scratch.size
    for a in range(0, out.size, step):
        b = min(a + step, out.size)
        t = scratch[:b - a]
        fold(t, [s[a:b] for s in srcs], ufunc)
        out[a:b] = t


def _scratch(comm, dtype) -> np.ndarray:
    """One cache block of ``dtype`` per communicator, reused."""
    got = comm._scratch_arrays
    dt = np.dtype(dtype)
    if dt not in got:
        got[dt] = np.empty(max(BLOCK_BYTES // dt.itemsize, 1), dt)
    return got[dt]
