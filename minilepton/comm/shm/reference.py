"""The reference collectives of the shared-memory backend: what the fast paths must equal.

Every array goes through the group's staging ring (``depth`` rows of P slots, one slot per
rank, about a core's L2 each) one chunk at a time. A chunk takes one *step*: each rank copies
its part into its own slot of row ``s % depth``, arrives at step s, waits for every peer, then
reads what it needs from the others' slots. A rank reaches step s + depth only after every
rank has arrived at s + 1, i.e. has finished reading step s, so rows are reused without any
further handshake (see ``sync``).

- all-reduce: every rank folds the P slots of a chunk in rank order into its own array,
  y = ((x₀ ⊕ x₁) ⊕ x₂) … ⊕ x_{P−1} (``fold``), then ``mean`` divides by P. Each rank does the
  reduce-scatter and the all-gather of the staged algorithm at once, for one wait per chunk.
- reduce-scatter: rank r folds block r of the P slots; all-gather: every rank copies every
  slot; broadcast: the root fills its slot and the others copy it.
"""

from __future__ import annotations

import numpy as np

from ..fold import fold
from .sync import wait_counters


def allreduce(comm, flat, ufunc, mean: bool) -> None:
    """``flat`` (private, C-contiguous, 1-D) becomes the rank-order fold of the P arrays."""
    P, r = comm.world_size, comm.rank
    if P == 1:  # the fold of one array is that array (and x / 1 is x)
        return
    ctr, me, everyone = comm._ctr, comm._me, comm._all
    for a, L, row in chunks(comm, flat):
        out = flat[a:a + L]
        row[r][:L] = out                  # my part of the chunk into my slot,
        s = comm._step = comm._step + 1   # "I have arrived at step s", and wait for all:
        ctr[me] = s
        wait_counters(ctr, everyone, s, comm.timeout_s, "allreduce", comm.members, comm.spin_s)
        ufunc(row[0][:L], row[1][:L], out=out)   # ((x₀ ⊕ x₁) ⊕ x₂) ⊕ … in rank order
        for q in range(2, P):
            ufunc(out, row[q][:L], out=out)
        if mean:
            np.divide(out, P, out=out)


def chunks(comm, flat):
    """The staging steps of ``flat``: (first element, length, the row of slots to use), one
    slot's worth each; the row is that of the step after the ones the caller has taken."""
    rows = comm.slots(flat.dtype)
    depth, m, n = len(rows), rows[0][0].size, flat.size
    for a in range(0, n, m):
        yield a, min(n, a + m) - a, rows[(comm._step + 1) % depth]


def reduce_scatter(comm, flat, out, ufunc) -> None:
    """``out`` (n / P elements) becomes the rank-order fold of block ``rank`` of each ``flat``."""
    P, r = comm.world_size, comm.rank
    blocks = flat.reshape(P, -1)
    stage = comm.stage(flat.dtype)
    m = stage.shape[2] // P  # elements of each block per step: P of them fill a slot
    for a in range(0, blocks.shape[1], m):
        L = min(blocks.shape[1], a + m) - a
        slots = stage[(comm._step + 1) % stage.shape[0]]
        slots[r, :P * L].reshape(P, L)[:] = blocks[:, a:a + L]
        comm._sync("reduce_scatter")
        fold(out[a:a + L], [slots[q, r * L:(r + 1) * L] for q in range(P)], ufunc)


def allgather(comm, flat, rows) -> None:
    """``rows[q]`` (P rows of ``flat.size``) becomes rank q's ``flat``."""
    stage = comm.stage(flat.dtype)
    m = stage.shape[2]
    for a in range(0, flat.size, m):
        b = min(flat.size, a + m)
        slots = stage[(comm._step + 1) % stage.shape[0], :, :b - a]
        slots[comm.rank] = flat[a:b]
        comm._sync("allgather")
        rows[:, a:b] = slots


def broadcast(comm, flat, root: int) -> None:
    """Every rank's ``flat`` becomes the root's."""
    stage = comm.stage(flat.dtype)
    m, me = stage.shape[2], comm.rank
    for a in range(0, flat.size, m):
        b = min(flat.size, a + m)
        slots = stage[(comm._step + 1) % stage.shape[0], :, :b - a]
        if me == root:
            slots[me] = flat[a:b]
        comm._sync("broadcast")
        if me != root:
            flat[a:b] = slots[root]
