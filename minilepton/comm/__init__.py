"""How workers talk: the ``Communicator`` protocol and its backends.

- ``base``: the protocol, ``CommError``, the counters (``stats``) and timeline ``hooks``;
- ``fold``: the fixed reduction orders every backend follows (rank order, ring order);
- ``shm/``: the shared-memory backend (the default), ``ShmCommunicator`` over one job's arena:
  reference algorithms, fast paths beside them, and the table that picks one per call;
- ``mpi/``: the same protocol on mpi4py (mpi4py is imported, and MPI initialised, only when a
  communicator is made);
- ``local``: ``LocalComm``, the communicator of a job of one process;
- ``device_staging``: collectives on GPU arrays, staged through host memory.
"""

from __future__ import annotations

from .base import OPS, CommError, CommStats, Communicator
from .shm import Arena, ArenaFullError, ShmCommunicator, ShmConfig

__all__ = ["OPS", "Arena", "ArenaFullError", "CommError", "CommStats", "Communicator",
           "ShmCommunicator", "ShmConfig"]
