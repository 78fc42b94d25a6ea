"""How workers talk: the ``Communicator`` protocol and its backends.

- ``base``: the protocol, ``CommError``, counters (``stats``) and timeline ``hooks``.
- ``shm``: the shared-memory backend (the default): ``ShmCommunicator`` over one job's
  ``arena``; its collectives in ``shm_collectives`` and ``ring``, its waiting in ``shm_sync``,
  its point-to-point queues in ``shm_channels``, its sizes in ``shm_config``.
- ``mpi``: the same protocol on mpi4py (imported on demand: it initialises MPI).
"""

from __future__ import annotations

from .arena import Arena, ArenaFullError
from .base import OPS, CommError, CommStats, Communicator
from .shm import ShmCommunicator, ShmConfig

__all__ = ["OPS", "Arena", "ArenaFullError", "CommError", "CommStats", "Communicator",
           "ShmCommunicator", "ShmConfig"]
