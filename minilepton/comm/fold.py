"""The fixed orders every backend reduces in, so that every rank gets the same bits, every run.

    rank order:  y = ((x₀ ⊕ x₁) ⊕ x₂) ⊕ … ⊕ x_{P−1}     (⊕: add for sum and mean, max for max)
    ring order:  block b is folded as x_b ⊕ x_{b+1} ⊕ … ⊕ x_{b−1} (indices mod P)

One ``ufunc(out=)`` per term: a chain of ``out=`` makes no temporaries and gives the same bits
as ``np.sum`` over a stacked view; ``mean`` is the sum divided by P afterwards. Arrays are cut
into P blocks by ``block_bounds``, the same cut on every backend.
"""

from __future__ import annotations

import numpy as np

UFUNCS = {"sum": np.add, "mean": np.add, "max": np.maximum}


def fold(out, rows, ufunc):
    """out = ((rows[0] ⊕ rows[1]) ⊕ rows[2]) …, left to right, chained in place. ``out`` may be
    ``rows[0]`` or ``rows[1]`` (read at the same index before it is written), no later row."""
    if len(rows) == 1:
        np.copyto(out, rows[0])
        return out
    ufunc(rows[0], rows[1], out=out)
    for q in range(2, len(rows)):
        ufunc(out, rows[q], out=out)
    return out


def block_bounds(n: int, world_size: int) -> list[int]:
    """Element offsets of the P blocks of an n-element array: block b is [o[b], o[b+1])."""
    return [b * n // world_size for b in range(world_size + 1)]


def ring_order(block: int, world_size: int) -> list[int]:
    """The ranks, in summation order, whose copies of ``block`` the ring adds up."""
    return [(block + k) % world_size for k in range(world_size)]


def ring_bytes(n: int, itemsize: int, rank: int, world_size: int) -> int:
    """Bytes rank ``rank`` sends in a ring all-reduce of ``n`` elements: the blocks it forwards,
    (r − s) mod P in reduce-scatter step s and (r + 1 − s) mod P in all-gather step s."""
    P, r = world_size, rank
    o = block_bounds(n, P)
    blocks = [(r - s) % P for s in range(P - 1)] + [(r + 1 - s) % P for s in range(P - 1)]
    return sum((o[b + 1] - o[b]) * itemsize for b in blocks)
