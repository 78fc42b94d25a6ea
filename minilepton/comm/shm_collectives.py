"""Collectives through shared memory: the fast default algorithms of ``ShmCommunicator``.

Two paths, chosen per call:

- **Arena arrays** (made by ``comm.zeros``): peers' data is read where it lies. All-reduce is
  a reduce-scatter then an all-gather: after a step that says "inputs ready", rank r reduces
  chunk r of all P arrays, in rank order, into its own array, piece by piece (``pipeline_bytes``);
  each finished piece advances r's counter, and the peers copy it at once, while it is still in
  cache; a last step says "done reading", so no rank returns (and lets its caller write) while
  a peer still reads its array. No private copy at all.
- **Private arrays**: staged through the group's staging ring in slot-sized chunks (1 MiB, one
  core's L2, so the chunk is still in cache when it is summed). For each chunk, every rank
  copies its part into its slot, arrives at the step, waits for the others, then sums all P
  slots in rank order into its own array: one wait per chunk, and the chunk just written is
  read back from cache.

Sums run ``((x₀ + x₁) + x₂) + …`` with one ``np.add(out=)`` per term (chains of ``out=`` avoid
temporaries and beat ``np.sum`` over a stacked view with identical bits), so every rank gets
the same bits, run after run. ``mean`` is that sum divided by P.

The counters report what the bandwidth-optimal algorithm sends per rank: 2(P−1)/P·N for
all-reduce, (P−1)/P·N for reduce-scatter, (P−1)·n for all-gather, (P−1)·N at a broadcast's
root (a flat tree).
"""

from __future__ import annotations

import time

import numpy as np

from . import ring
from .shm_sync import LINE, wait_counters

UFUNCS = {"sum": np.add, "mean": np.add, "max": np.maximum}
ALGORITHMS = (None, "rsag", "ring")
BLOCK_BYTES = 256 << 10  # cache block for sums of more than two terms


def _ordered(out, srcs, uf, alias: int | None, scratch=None):
    """out = uf(…uf(uf(srcs[0], srcs[1]), srcs[2])…) in rank order. ``alias``: the index of a
    source that is ``out`` itself (its elements must be read before they are overwritten)."""
    P = len(srcs)
    if P == 2 or alias is None or alias < 2:
        uf(srcs[0], srcs[1], out=out)
        for q in range(2, P):
            uf(out, srcs[q], out=out)
        return
    step = max(BLOCK_BYTES // out.itemsize, 1)
    for a in range(0, out.size, step):
        b = min(a + step, out.size)
        t = scratch[:b - a]
        uf(srcs[0][a:b], srcs[1][a:b], out=t)
        for q in range(2, P):
            uf(t, srcs[q][a:b], out=t)
        out[a:b] = t


def _scratch(comm, dtype):
    got = getattr(comm, "_scratch_arrays", None)
    if got is None:
        got = comm._scratch_arrays = {}
    dt = np.dtype(dtype)
    if dt not in got:
        got[dt] = np.empty(max(BLOCK_BYTES // dt.itemsize, 1), dt)
    return got[dt]


def _check(comm, x, op, what):
    x = comm.check_array(x, what)
    comm.check_op(op)
    comm.check_mean_dtype(x, op)
    return x


def allreduce(comm, x, op="sum", algorithm=None):
    x = _check(comm, x, op, "allreduce")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown all-reduce algorithm {algorithm!r}; choose 'rsag' or 'ring'")
    if algorithm == "ring":
        return ring.allreduce(comm, x, op)
    P = comm.world_size
    n = x.nbytes
    with comm._timed("allreduce", 2 * (P - 1) * n // P, 2 * (P - 1)):
        if P == 1:
            return x
        flat = x.reshape(-1)
        peers = comm.peers_of(flat) if x.nbytes > comm.arena_min_bytes else None
        if comm.verbose:
            comm._say(f"allreduce {op} {n} B {x.dtype}{x.shape} rsag "
                      f"({'arena, in place' if peers else 'private, staged'})")
        if peers is not None:
            _allreduce_arena(comm, flat, peers, UFUNCS[op], op == "mean")
        elif P > 2 and x.nbytes > comm.config.split_min_bytes:
            _allreduce_staged_split(comm, flat, UFUNCS[op], op == "mean")
        else:
            _allreduce_staged(comm, flat, UFUNCS[op], op == "mean")
    return x


def allreduce_small(comm, x, op):
    """``allreduce`` of a private array that fits one staging slot: the same steps as the
    staged path below, with the bookkeeping of ``_timed`` done inline (no hooks, no link)."""
    t0 = time.perf_counter()
    P, r, n = comm.world_size, comm.rank, x.size
    s = comm._step + 1
    comm._step = s
    row = comm.slots(x.dtype)[s % comm.config.stage_depth]
    flat = x.reshape(-1)
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
    stats = comm.stats
    stats.bytes_sent += 2 * (P - 1) * x.nbytes // P
    stats.messages_sent += 2 * (P - 1)
    stats.calls["allreduce"] = stats.calls.get("allreduce", 0) + 1
    stats.seconds["allreduce"] = stats.seconds.get("allreduce", 0.0) + time.perf_counter() - t0
    return x


def _allreduce_arena(comm, flat, peers, uf, mean):
    """Reduce-scatter/all-gather in place, pipelined: rank r's chunk is cut into K pieces;
    after reducing piece k it advances its counter, and a peer copies that piece as soon as it
    sees the counter move, while the piece is still in r's cache. One step per piece, no
    barrier between the two phases; a last step says "done reading"."""
    P, r, n = comm.world_size, comm.rank, flat.size
    s0 = comm._sync("allreduce (inputs ready)")
    piece = max(comm.pipeline_bytes // flat.itemsize, 1) if comm.pipeline_bytes else n + 1
    K = max(1, -(-(n // P + 1) // piece))  # the same on every rank
    bounds = [(q * n // P, (q + 1) * n // P) for q in range(P)]
    cut = [[a + k * (b - a) // K for k in range(K + 1)] for a, b in bounds]
    scratch = _scratch(comm, flat.dtype)
    ctr, me, members = comm._ctr, comm._me, comm.members
    for k in range(K):
        a, b = cut[r][k], cut[r][k + 1]
        out = flat[a:b]
        _ordered(out, [p[a:b] for p in peers], uf, r, scratch)
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


def _allreduce_staged(comm, flat, uf, mean):
    P, r, n = comm.world_size, comm.rank, flat.size
    ring = comm.slots(flat.dtype)
    depth, m = len(ring), ring[0][0].size
    ctr, me, idx, members = comm._ctr, comm._me, comm._all, comm.members
    t_s, spin_s = comm.timeout_s, comm.spin_s
    for a in range(0, n, m):
        b = min(n, a + m)
        L = b - a
        s = comm._step + 1
        comm._step = s
        row = ring[s % depth]
        out = flat[a:b] if L != n else flat
        row[r][:L] = out
        ctr[me] = s
        wait_counters(ctr, idx, s, t_s, "allreduce", members, spin_s)
        uf(row[0][:L], row[1][:L], out=out)
        for q in range(2, P):
            uf(out, row[q][:L], out=out)
        if mean:
            np.divide(out, P, out=out)


def _allreduce_staged_split(comm, flat, uf, mean):
    """Private arrays, P > 2: the staged path with the reduction split. Rank r sums only part
    r of each chunk (1/P of the work, which matters when P ranks share fewer cores), writes it
    back over its own part of its slot, and after a second step copies the other parts from
    their owners' slots. Two waits per chunk; needs a staging ring at least 3 deep (a slot is
    still read during the step after it was written)."""
    P, r, n = comm.world_size, comm.rank, flat.size
    ring = comm.slots(flat.dtype)
    depth, m = len(ring), ring[0][0].size
    for a in range(0, n, m):
        L = min(n, a + m) - a
        row = ring[(comm._step + 1) % depth]
        row[r][:L] = flat[a:a + L]
        comm._sync("allreduce (chunk staged)")
        cut = [q * L // P for q in range(P + 1)]
        lo, hi = cut[r], cut[r + 1]
        out = flat[a + lo:a + hi]
        _ordered(out, [row[q][lo:hi] for q in range(P)], uf, None)
        if mean:
            np.divide(out, P, out=out)
        row[r][lo:hi] = out
        comm._sync("allreduce (parts reduced)")
        for q in range(P):
            if q != r:
                flat[a + cut[q]:a + cut[q + 1]] = row[q][cut[q]:cut[q + 1]]


def reduce_scatter(comm, x, op="sum"):
    x = _check(comm, x, op, "reduce_scatter")
    P, r = comm.world_size, comm.rank
    if x.ndim == 0 or x.shape[0] % P:
        raise ValueError(f"reduce_scatter needs axis 0 divisible by {P} ranks, got {x.shape}")
    out = np.empty((x.shape[0] // P,) + x.shape[1:], x.dtype)
    o, blocks = out.reshape(-1), x.reshape(P, -1)
    uf, mean = UFUNCS[op], op == "mean"
    with comm._timed("reduce_scatter", (P - 1) * x.nbytes // P, P - 1):
        if comm.verbose:
            comm._say(f"reduce_scatter {op} {x.nbytes} B {x.dtype}{x.shape}")
        peers = comm.peers_of(x.reshape(-1)) if P > 1 else None
        if P == 1:
            o[:] = blocks[0]
        elif peers is not None:
            comm._sync("reduce_scatter (inputs ready)")
            _ordered(o, [p.reshape(P, -1)[r] for p in peers], uf, None)
            comm._sync("reduce_scatter (done reading)")
        else:
            st = comm.stage(x.dtype)
            m = st.shape[2] // P
            for a in range(0, blocks.shape[1], m):
                b = min(blocks.shape[1], a + m)
                L = b - a
                s = comm._step + 1
                slots = st[s % st.shape[0]]
                slots[r, :P * L].reshape(P, L)[:] = blocks[:, a:b]
                comm._sync("reduce_scatter")
                _ordered(o[a:b], [slots[q, r * L:(r + 1) * L] for q in range(P)], uf, None)
        if mean:
            np.divide(o, P, out=o)
    return out


def allgather(comm, x):
    x = comm.check_array(x, "allgather")
    P, r = comm.world_size, comm.rank
    shape = (P * x.shape[0],) + x.shape[1:] if x.ndim else (P,)
    out = np.empty(shape, x.dtype)
    rows, flat = out.reshape(P, -1), x.reshape(-1)
    with comm._timed("allgather", (P - 1) * x.nbytes, P - 1):
        if comm.verbose:
            comm._say(f"allgather {x.nbytes} B {x.dtype}{x.shape}")
        peers = comm.peers_of(flat) if P > 1 else None
        if P == 1:
            rows[0] = flat
        elif peers is not None:
            comm._sync("allgather (inputs ready)")
            for q in range(P):
                rows[q] = peers[q]
            comm._sync("allgather (done reading)")
        else:
            st = comm.stage(x.dtype)
            m = st.shape[2]
            for a in range(0, flat.size, m):
                b = min(flat.size, a + m)
                slots = st[(comm._step + 1) % st.shape[0], :, :b - a]
                slots[r] = flat[a:b]
                comm._sync("allgather")
                rows[:, a:b] = slots
    return out


def broadcast(comm, x, root=0):
    x = comm.check_array(x, "broadcast")
    root = comm.check_peer(root, "broadcast")
    P, r = comm.world_size, comm.rank
    sent = (P - 1) * x.nbytes if r == root else 0
    with comm._timed("broadcast", sent, (P - 1) if r == root else 0,
                     critical=(P - 1, (P - 1) * x.nbytes)):
        if comm.verbose:
            comm._say(f"broadcast {x.nbytes} B {x.dtype}{x.shape} from rank {root}")
        if P == 1:
            return x
        flat = x.reshape(-1)
        peers = comm.peers_of(flat)
        if peers is not None:
            comm._sync("broadcast (root ready)")
            if r != root:
                flat[:] = peers[root]
            comm._sync("broadcast (done reading)")
        else:
            st = comm.stage(x.dtype)
            m = st.shape[2]
            for a in range(0, flat.size, m):
                b = min(flat.size, a + m)
                slots = st[(comm._step + 1) % st.shape[0], :, :b - a]
                if r == root:
                    slots[r] = flat[a:b]
                comm._sync("broadcast")
                if r != root:
                    flat[a:b] = slots[root]
    return x
