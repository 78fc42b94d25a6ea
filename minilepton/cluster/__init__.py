"""The simulated cluster: worker processes as nodes, supervised by one launcher.

- ``launch(fn, world_size, args=(), backend="shm", ...)`` runs ``fn(comm, *args)`` on every
  rank and returns the results in rank order (``launcher``); ``WorkerError`` (``errors``) names
  a failing rank with its exception or signal and traceback (``blame``: the rank that stalled,
  not the one that noticed).
- ``simulate``: link latency/bandwidth profiles and per-node speed factors.
- ``worker``, ``logs``, ``blas``: what each worker sets up.
- ``mpi_launch`` (the job: payload, results, errors) and ``mpi_watch`` (mpiexec and its
  ranks, watched and stopped): the MPI backend's launcher;
  ``mpi_worker``: its rank side; ``mpi_direct``: programs started by mpiexec themselves, each
  rank under a guard (``rank_guard``); ``mpi_segments``: the MPI library's files and the one
  rule for removing them.
"""

from __future__ import annotations

from . import simulate
from .errors import WorkerError
from .launcher import launch
from .simulate import PROFILES, LinkModel

__all__ = ["PROFILES", "LinkModel", "WorkerError", "launch", "simulate"]
