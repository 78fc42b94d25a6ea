"""The ring all-reduce over point-to-point channels: the classic bandwidth-optimal algorithm,
and what runs between machines that share no memory.

The N values are cut into P chunks; rank r sends to r+1 and receives from r−1 (mod P).
(The MPI backend's ``"ring"`` runs the same steps over MPI messages, with the same bits.)

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

from itertools import pairwise

import numpy as np

from ..fold import block_bounds


def chunk_bounds(n: int, world_size: int) -> list:
    """Element ranges ``(a, b)`` of the P chunks (``block_bounds``, the cut of every backend)."""
    return list(pairwise(block_bounds(n, world_size)))


def allreduce(comm, flat, ufunc, mean: bool) -> None:
    """In-place ring all-reduce of ``flat`` over ``comm``'s channels."""
    P, r = comm.world_size, comm.rank
    bounds = chunk_bounds(flat.size, P)
    nxt, prv = (r + 1) % P, (r - 1) % P
    ch = comm.channels
    for s in range(P - 1):
        sa, sb = bounds[(r - s) % P]
        ra, rb = bounds[(r - s - 1) % P]
        ch.sendrecv(flat[sa:sb], nxt, flat[ra:rb], prv, op=ufunc)
    if mean:  # rank r now holds chunk r+1 complete
        a, b = bounds[(r + 1) % P]
        np.divide(flat[a:b], P, out=flat[a:b])
    for s in range(P - 1):
        sa, sb = bounds[(r + 1 - s) % P]
        ra, rb = bounds[(r - s) % P]
        ch.sendrecv(flat[sa:sb], nxt, flat[ra:rb], prv)

