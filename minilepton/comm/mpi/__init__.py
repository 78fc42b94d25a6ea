"""The Communicator protocol on MPI (mpi4py), for jobs started by ``mpiexec``.

Every rank of an MPI job is one worker. ``communicator`` holds ``MPICommunicator`` (setup,
polling waits, point to point, split, the collectives' checks and counters); ``allreduce`` its
three all-reduce algorithms: ``"ordered"`` (the default: rank order, the bits of the
shared-memory backend), ``"native"`` (``MPI_Iallreduce``, the library's order) and ``"ring"``;
``presence`` who did not arrive when a wait times out.
Counters record what this rank sends in the algorithm's own model (for ``native`` the
bandwidth-optimal 2(P−1)/P · N bytes in 2(P−1) messages). Importing this package does not
import mpi4py; making a communicator does (and initialises MPI).
"""

from __future__ import annotations

from ..fold import block_bounds, ring_order
from .communicator import ALGORITHMS, MPICommunicator

__all__ = ["ALGORITHMS", "MPICommunicator", "block_bounds", "ring_order"]
