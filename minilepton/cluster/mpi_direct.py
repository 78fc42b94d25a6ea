"""Direct MPI runs: ``mpiexec -n P python -m minilepton ...``, every rank runs the program.

There is no launcher process: ``in_mpi_job()`` says this process is a rank of an MPI job (from
the environment alone), ``world_from_mpi()`` gives the communicator over COMM_WORLD (and sets
RANK, WORLD_SIZE, LOCAL_RANK), and ``run_direct(fn, args)`` runs ``fn(comm, *args)`` here,
aborting every rank if it fails. Also here: the MPI library's shared-memory files of this
rank (``mpi_segments``), which an aborted job would leave in /dev/shm.
"""

from __future__ import annotations

import os
import sys
import traceback

from ..comm.mpi import MPICommunicator

# Environment variables that process managers set in every rank (MPICH/hydra, Intel MPI,
# Open MPI, PMIx, MVAPICH).
_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MPI_SEGMENTS: list = []  # this rank's MPI shared-memory files, in a direct run


def mpi_segments() -> list[str]:
    """Files in /dev/shm that this process has mapped (MPICH's intra-node segments); Linux."""
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split() for line in f]
    except OSError:
        return []
    return sorted({row[-1] for row in fields if len(row) == 6 and row[-1].startswith("/dev/shm/")})


def unlink_segments(paths) -> None:
    """Remove shared-memory files (the ranks that mapped them keep their mappings)."""
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def local_rank(world) -> int:
    """This rank's index among the ranks on the same node."""
    from mpi4py import MPI  # optional; MPI is initialised already

    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def in_mpi_job() -> bool:
    """True when this process was started by mpiexec/mpirun (reads the environment only)."""
    return any(name in os.environ for name in _MPI_RANK_VARS + _MPI_SIZE_VARS)


def world_from_mpi(algorithm: str = "ordered"):
    """An ``MPICommunicator`` over COMM_WORLD; sets RANK, WORLD_SIZE and LOCAL_RANK."""
    comm = MPICommunicator(None, algorithm)
    _MPI_SEGMENTS[:] = mpi_segments()  # mapped by MPI_Init; nothing else has run yet
    os.environ.update(RANK=str(comm.rank), WORLD_SIZE=str(comm.world_size),
                      LOCAL_RANK=str(local_rank(comm.comm)))
    return comm


def run_direct(fn, args=(), algorithm: str = "ordered"):
    """``fn(comm, *args)`` on this rank of a direct MPI job; any exception aborts every rank."""
    comm = world_from_mpi(algorithm)
    try:
        return fn(comm, *args)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        _abort(comm, f"exit status {exc.code}", "", int(exc.code) if isinstance(exc.code, int)
               else 1)
    except BaseException as exc:  # noqa: BLE001 - the other ranks must not wait for ever
        _abort(comm, f"{type(exc).__name__}: {exc}", traceback.format_exc(), 1)


def _abort(comm, summary: str, trace: str, code: int):
    sys.stderr.write(f"{trace}[rank {comm.rank}] {summary}; aborting the MPI job\n")
    sys.stderr.flush()
    unlink_segments(_MPI_SEGMENTS)  # MPI_Abort would leave them in /dev/shm
    comm.comm.Abort(code)
