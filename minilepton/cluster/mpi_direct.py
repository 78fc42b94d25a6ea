"""Direct MPI runs: ``mpiexec -n P python -m minilepton ...``, every rank runs the program.

There is no launcher process: ``in_mpi_job()`` says this process is a rank of an MPI job (from
the environment alone), ``init_mpi()`` puts the rank under a guard (``rank_guard``: a parent
process that names the rank if a signal kills it, and removes its MPI files) and starts MPI,
``world_from_mpi()`` gives the communicator over COMM_WORLD (and sets RANK, WORLD_SIZE,
LOCAL_RANK), and ``run_direct(fn, args)`` runs ``fn(comm, *args)`` here, aborting every rank if
it fails (a rank that reports its own failure removes the MPI files itself: ``mpi_segments``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback

from ..comm.mpi import MPICommunicator
from . import rank_guard
from .errors import blame
from .mpi_segments import mpi_segments, unlink_segments

# Environment variables that process managers set in every rank (MPICH/hydra, Intel MPI,
# Open MPI, PMIx, MVAPICH).
_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MPI_SEGMENTS: list = []  # this rank's MPI shared-memory files, in a direct run
_STOPS = (signal.SIGINT, signal.SIGTERM)


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


def init_mpi():
    """Start MPI (importing mpi4py's ``MPI`` calls ``MPI_Init``) under a guard; the module.

    The first time, in a rank of an MPI job, this process forks: the parent guards the rank
    (``rank_guard``) and never returns. SIGINT and SIGTERM wait until MPI has started and the
    guard knows the rank's MPI files (then they are delivered as usual): ``MPI_Init`` blocks in
    C, where no Python handler runs, and a rank stopped in there would leave those files behind.
    A rank that cannot start (its peer exited) is stopped by its guard."""
    first = "mpi4py.MPI" not in sys.modules and in_mpi_job()
    if first:
        rank_guard.guard_this_rank(next((os.environ[v] for v in _MPI_RANK_VARS
                                         if v in os.environ), "?"))
    stops: list = []
    here = threading.current_thread() is threading.main_thread()  # (handlers live there)
    previous = {sig: signal.signal(sig, lambda signum, frame: stops.append(signum))
                for sig in _STOPS} if here else {}
    try:
        from mpi4py import MPI  # optional dependency
        if first:
            _note_segments(MPI.COMM_WORLD.Get_rank())
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, and left as it is now
                signal.signal(sig, handler)
        for sig in stops[:1]:  # now to the handler it was meant for
            os.kill(os.getpid(), sig)
    return MPI


def _note_segments(rank: int) -> None:
    """This rank's MPI files (mapped by ``MPI_Init``), kept for ``_abort`` and told its guard."""
    _MPI_SEGMENTS[:] = mpi_segments(rank_guard.manager_pid())
    rank_guard.tell(rank, _MPI_SEGMENTS)


def world_from_mpi(algorithm: str = "ordered"):
    """An ``MPICommunicator`` over COMM_WORLD; sets RANK, WORLD_SIZE and LOCAL_RANK."""
    init_mpi()
    comm = MPICommunicator(None, algorithm)
    if not _MPI_SEGMENTS:  # MPI was started by someone else
        _note_segments(comm.rank)
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
    """Report (naming the rank that stalled when this one merely noticed: ``errors.blame``),
    remove the MPI segments, and abort the job."""
    failure = blame(comm.rank, {comm.rank: (summary, summary)})
    sys.stderr.write(f"{trace}[rank {failure.rank}] {failure.message}; aborting the MPI job\n")
    sys.stderr.flush()
    unlink_segments(_MPI_SEGMENTS)  # MPI_Abort would leave them in /dev/shm
    comm.comm.Abort(code)
