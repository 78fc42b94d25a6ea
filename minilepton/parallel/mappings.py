"""Communication as autograd functions: each op paired with its conjugate backward.

Tensor parallelism (Shoeybi et al., "Megatron-LM", 2019, §3) needs only four ops between the
ranks of one tensor-parallel group of size P. Each is the transpose of its partner, so the
gradient of one is the other:

    ===================  =============================  ==============================
    op                   forward                        backward (∂L/∂x from g=∂L/∂y)
    ===================  =============================  ==============================
    copy_to_group        y = x            (identity)    ∂x = Σ_ranks g   (all-reduce)
    reduce_from_group    y = Σ_ranks x    (all-reduce)  ∂x = g           (identity)
    scatter_to_group     y = x[..., own columns]        ∂x = gather of every rank's g
    gather_from_group    y = [x_0 | x_1 | … | x_{P−1}]  ∂x = g[..., own columns]
    ===================  =============================  ==============================

``copy`` sits where a replicated activation enters a sharded computation (every rank's shard
contributes to ∂x, so the contributions are summed); ``reduce`` sits where partial sums of a
sharded computation leave it. Splits along the last axis may be uneven: rank r owns
``shard_range(n, P, r)`` (the first n mod P ranks hold one extra column).
"""

from __future__ import annotations

import numpy as np

from ..autograd import Tensor


def shard_range(n: int, parts: int, index: int) -> slice:
    """Columns of an axis of length ``n`` that part ``index`` of ``parts`` owns (near-even)."""
    if parts > n:
        raise ValueError(f"cannot shard {n} features over {parts} ranks "
                         "(more shards than features)")
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return slice(start, start + base + (1 if index < extra else 0))


def _allreduce(comm, array) -> np.ndarray:
    """Σ over the group of ``array`` (a fresh contiguous copy; the input is left alone)."""
    out = np.array(array, order="C", copy=True)
    return comm.allreduce(out, op="sum")


def _allgather_last(comm, array, n_total: int) -> np.ndarray:
    """Concatenate every rank's ``array`` along the last axis into ``n_total`` columns.

    Shards may differ by one column: each is padded to the widest, gathered, then trimmed.
    """
    P = comm.world_size
    widest = shard_range(n_total, P, 0).stop
    padded = np.zeros(array.shape[:-1] + (widest,), dtype=array.dtype)
    padded[..., :array.shape[-1]] = array
    blocks = np.asarray(comm.allgather(padded)).reshape((P,) + padded.shape)
    return np.concatenate([blocks[r][..., :_width(n_total, P, r)] for r in range(P)], axis=-1)


def _width(n: int, parts: int, index: int) -> int:
    s = shard_range(n, parts, index)
    return s.stop - s.start


def copy_to_group(x: Tensor, comm) -> Tensor:
    """y = x;  ∂x = Σ_ranks g (all-reduce in backward)."""
    return Tensor._make(x.data, (x,), lambda g: (_allreduce(comm, g),))


def reduce_from_group(x: Tensor, comm) -> Tensor:
    """y = Σ_ranks x (all-reduce in forward);  ∂x = g."""
    return Tensor._make(_allreduce(comm, x.data), (x,), lambda g: (g,))


def scatter_to_group(x: Tensor, comm) -> Tensor:
    """y = this rank's columns of x (last axis);  ∂x = every rank's g gathered back."""
    n = x.shape[-1]
    cols = shard_range(n, comm.world_size, comm.rank)
    return Tensor._make(np.ascontiguousarray(x.data[..., cols]), (x,),
                        lambda g: (_allgather_last(comm, g, n),))


def gather_from_group(x: Tensor, comm, features: int) -> Tensor:
    """y = [x_0 | … | x_{P−1}] (``features`` columns);  ∂x = this rank's columns of g."""
    cols = shard_range(features, comm.world_size, comm.rank)
    width = cols.stop - cols.start
    if x.shape[-1] != width:
        raise ValueError(f"rank {comm.rank} holds {x.shape[-1]} columns, but its shard of "
                         f"{features} features over {comm.world_size} ranks has {width}")
    full = _allgather_last(comm, x.data, features)
    return Tensor._make(full, (x,), lambda g: (np.ascontiguousarray(g[..., cols]),))
