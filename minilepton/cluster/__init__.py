"""The simulated cluster: worker processes as nodes, supervised by one launcher.

- ``launch(fn, world_size, args=(), backend="shm", ...)`` runs ``fn(comm, *args)`` on every
  rank and returns the results in rank order (``launcher``); ``WorkerError`` names a failing
  rank with its exception or signal and traceback.
- ``simulate``: link latency/bandwidth profiles and per-node speed factors.
- ``worker``, ``logs``, ``blas``: what each worker sets up; ``mpi_launch``: the MPI backend's
  launcher.
"""

from __future__ import annotations

from . import simulate
from .launcher import WorkerError, launch
from .simulate import PROFILES, LinkModel

__all__ = ["PROFILES", "LinkModel", "WorkerError", "launch", "simulate"]
