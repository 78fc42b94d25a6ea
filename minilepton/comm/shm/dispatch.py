"""How a shared-memory collective runs: check the call, count it, pick its algorithm.

One table says which function runs each call; ``path`` picks the row, the first that fits, by
the algorithm asked for, where the array lives (private, or in the arena: made by
``comm.zeros``) and its size (P > 1; with one rank every call takes the reference):

    collective      path    when                                           runs
    allreduce       ring    algorithm="ring"                               ring.allreduce
                    arena   an arena array over arena_min_bytes            fast.allreduce_arena
                    single  a private array over single_copy_min_bytes,    single_copy.allreduce
                            if single_copy and the kernel lets ranks read
                    split   a private array over split_min_bytes           fast.allreduce_split
                    small   one staging slot or less, no hook/link/verbose fast.allreduce_small
                    staged  anything else                                  reference.allreduce
    reduce_scatter  arena   an arena array (or a view of one)              fast.*_arena
    allgather       staged  anything else                                  reference.*
    broadcast

``reference`` and ``ring`` define the bits; every ``fast`` path gives the same bits. Counters
report what the bandwidth-optimal algorithm sends per rank: 2(P−1)/P·N for all-reduce (the
ring: exactly the chunks it forwards), (P−1)/P·N for reduce-scatter, (P−1)·n for all-gather,
(P−1)·N at a broadcast's root (a flat tree).
"""

from __future__ import annotations

import numpy as np

from ..fold import UFUNCS, ring_bytes
from . import fast, reference, ring, single_copy

ALGORITHMS = (None, "rsag", "ring")

TABLE = {
    ("allreduce", "ring"): ring.allreduce,
    ("allreduce", "arena"): fast.allreduce_arena,
    ("allreduce", "small"): fast.allreduce_small,  # (comm, x, op): it checks nothing, counts itself
    ("allreduce", "single"): single_copy.allreduce,
    ("allreduce", "split"): fast.allreduce_split,
    ("allreduce", "staged"): reference.allreduce,
    ("reduce_scatter", "arena"): fast.reduce_scatter_arena,
    ("reduce_scatter", "staged"): reference.reduce_scatter,
    ("allgather", "arena"): fast.allgather_arena,
    ("allgather", "staged"): reference.allgather,
    ("broadcast", "arena"): fast.broadcast_arena,
    ("broadcast", "staged"): reference.broadcast,
}

_SAY = {"ring": "ring (send to rank {right}, receive from rank {left}, {steps} steps)",
        "arena": "rsag (arena, in place)", "split": "rsag (private, staged, split fold)",
        "single": "rsag (private, read in the peers' memory)",
        "staged": "rsag (private, staged)"}


def path(comm, collective: str, x, algorithm: str | None = None) -> str:
    """The table's row for ``collective`` on ``x`` (checked) with ``algorithm``."""
    P = comm.world_size
    if collective != "allreduce":
        return "arena" if P > 1 and comm.in_arena(x) else "staged"
    if algorithm == "ring":
        return "ring"
    n = x.nbytes
    if P == 1:
        return "staged"
    if n > comm.arena_min_bytes and comm.in_arena(x):
        return "arena"
    if n > comm.config.split_min_bytes:
        cfg = comm.config  # the probe, two exchanges, runs once per group
        return "single" if cfg.single_copy and n > cfg.single_copy_min_bytes \
            and single_copy.available(comm) else "split"
    if 0 < n <= comm._small_bytes and not comm.hooks and comm.link is None and not comm.verbose:
        return "small"
    return "staged"


def allreduce(comm, x, op: str = "sum", algorithm: str | None = None):
    """Every rank's ``x`` becomes op(x₀, …, x_{P−1}), in place (``algorithm``: rsag or ring)."""
    _check(comm, x, op, "allreduce")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {algorithm!r}; choose 'rsag' or 'ring'")
    how = path(comm, "allreduce", x, algorithm)
    if how == "small":  # the latency path: no context manager, it counts itself
        return TABLE["allreduce", how](comm, x, op)
    flat, P, r = x.reshape(-1), comm.world_size, comm.rank
    sent = (ring_bytes(x.size, x.itemsize, r, P) if how == "ring"
            else 2 * (P - 1) * x.nbytes // P)
    with comm._timed("allreduce", sent, 2 * (P - 1)):
        if comm.verbose:
            said = _SAY[how].format(right=(r + 1) % P, left=(r - 1) % P, steps=2 * (P - 1))
            comm._say(f"allreduce {op} {x.nbytes} B {x.dtype}{x.shape} {said}")
        TABLE["allreduce", how](comm, flat, UFUNCS[op], op == "mean")
    return x


def reduce_scatter(comm, x, op: str = "sum"):
    """Rank r gets block r (axis 0) of op(x₀, …, x_{P−1}), a new array."""
    _check(comm, x, op, "reduce_scatter")
    P = comm.world_size
    if x.ndim == 0 or x.shape[0] % P:
        raise ValueError(f"reduce_scatter needs axis 0 divisible by {P} ranks, got {x.shape}")
    out = np.empty((x.shape[0] // P,) + x.shape[1:], x.dtype)
    flat, o = x.reshape(-1), out.reshape(-1)
    with comm._timed("reduce_scatter", (P - 1) * x.nbytes // P, P - 1):
        if comm.verbose:
            comm._say(f"reduce_scatter {op} {x.nbytes} B {x.dtype}{x.shape}")
        TABLE["reduce_scatter", path(comm, "reduce_scatter", flat)](comm, flat, o, UFUNCS[op])
        if op == "mean":
            np.divide(o, P, out=o)
    return out


def allgather(comm, x):
    """Every rank gets the P ranks' ``x`` stacked on axis 0, a new array."""
    x = comm.check_array(x, "allgather")
    P = comm.world_size
    out = np.empty((P * x.shape[0],) + x.shape[1:] if x.ndim else (P,), x.dtype)
    flat = x.reshape(-1)
    with comm._timed("allgather", (P - 1) * x.nbytes, P - 1):
        if comm.verbose:
            comm._say(f"allgather {x.nbytes} B {x.dtype}{x.shape}")
        TABLE["allgather", path(comm, "allgather", flat)](comm, flat, out.reshape(P, -1))
    return out


def broadcast(comm, x, root: int = 0):
    """Every rank's ``x`` becomes the root's, in place."""
    x = comm.check_array(x, "broadcast")
    root = comm.check_peer(root, "broadcast")
    P = comm.world_size
    mine = P - 1 if comm.rank == root else 0
    with comm._timed("broadcast", mine * x.nbytes, mine, critical=(P - 1, (P - 1) * x.nbytes)):
        if comm.verbose:
            comm._say(f"broadcast {x.nbytes} B {x.dtype}{x.shape} from rank {root}")
        flat = x.reshape(-1)
        TABLE["broadcast", path(comm, "broadcast", flat)](comm, flat, root)
    return x


def _check(comm, x, op: str, what: str) -> None:
    """Raise, with the reason, unless ``x`` is a C-contiguous array and ``op`` fits it."""
    if (type(x) is not np.ndarray or not x.flags.c_contiguous or op not in UFUNCS
            or (op == "mean" and x.dtype.kind != "f")):  # one quick test on the common path
        comm.check_array(x, what)
        comm.check_op(op)
        comm.check_mean_dtype(x, op)
