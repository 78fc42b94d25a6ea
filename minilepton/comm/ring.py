"""The ring all-reduce over point-to-point channels: the classic bandwidth-optimal algorithm,
and what runs between machines that share no memory.

The N values are cut into P chunks; rank r sends to r+1 and receives from r−1 (mod P).

- Reduce-scatter, P−1 steps: at step s rank r sends chunk (r−s) mod P and adds the chunk
  (r−s−1) mod P it receives into its own. Chunk c starts at rank c and picks up one rank per
  step, so after P−1 steps rank c−1 holds it complete, summed in the fixed ring order
  ``((x_c + x_{c+1}) + …) + x_{c−1}`` (indices mod P): the same bits on every rank, every run
  (but not the bits of the rank-order sum 0, 1, …, P−1, except for chunk 0).
- All-gather, P−1 steps: at step s rank r forwards chunk (r+1−s) mod P and stores the chunk
  (r−s) mod P it receives.

Each rank sends 2(P−1) messages of N/P values, 2(P−1)/P·N bytes in all, whatever P is: the
ring's total traffic is the lower bound for an all-reduce, which is why it scales.
"""

from __future__ import annotations

import numpy as np


def chunk_bounds(n: int, world_size: int):
    """Element ranges of the P chunks: chunk c is ``[c·n//P, (c+1)·n//P)``."""
    return [(c * n // world_size, (c + 1) * n // world_size) for c in range(world_size)]


def allreduce(comm, x, op: str = "sum"):
    """In-place ring all-reduce of ``x`` over ``comm``'s channels (``op`` sum, mean or max)."""
    P, r = comm.world_size, comm.rank
    uf = np.maximum if op == "max" else np.add
    flat = x.reshape(-1)
    bounds = chunk_bounds(flat.size, P)
    sent = _ring_bytes(bounds, r, P, x.itemsize) if P > 1 else 0
    nxt, prv = (r + 1) % P, (r - 1) % P
    with comm._timed("allreduce", sent, 2 * (P - 1)):
        if comm.verbose:
            comm._say(f"allreduce {op} {x.nbytes} B {x.dtype}{x.shape} ring "
                      f"(send to rank {nxt}, receive from rank {prv}, {2 * (P - 1)} steps)")
        if P == 1:
            return x
        ch = comm.channels
        for s in range(P - 1):
            sa, sb = bounds[(r - s) % P]
            ra, rb = bounds[(r - s - 1) % P]
            ch.sendrecv(flat[sa:sb], nxt, flat[ra:rb], prv, op=uf)
        if op == "mean":
            a, b = bounds[(r + 1) % P]
            np.divide(flat[a:b], P, out=flat[a:b])
        for s in range(P - 1):
            sa, sb = bounds[(r + 1 - s) % P]
            ra, rb = bounds[(r - s) % P]
            ch.sendrecv(flat[sa:sb], nxt, flat[ra:rb], prv)
    return x


def _ring_bytes(bounds, r, P, itemsize) -> int:
    """Bytes rank r sends: the chunks it forwards in both phases."""
    chunks = [(r - s) % P for s in range(P - 1)] + [(r + 1 - s) % P for s in range(P - 1)]
    return sum((bounds[c][1] - bounds[c][0]) * itemsize for c in chunks)
