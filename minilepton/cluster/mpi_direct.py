"""Direct MPI runs: ``mpiexec -n P python -m minilepton ...``, every rank runs the program.

There is no launcher process: ``in_mpi_job()`` says this process is a rank of an MPI job (from
the environment alone), ``world_from_mpi()`` gives the communicator over COMM_WORLD (and sets
RANK, WORLD_SIZE, LOCAL_RANK), and ``run_direct(fn, args)`` runs ``fn(comm, *args)`` here,
aborting every rank if it fails. Also here: the MPI library's shared-memory files of this
rank (``mpi_segments``, with hydra's topology file), which an aborted job would leave behind,
and ``unlink_segments``, which removes only such files: named as MPICH names them, directly in
/dev/shm (or hydra's in /tmp), regular files this user owns, never through a link.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import traceback

from ..comm.mpi import MPICommunicator

# Environment variables that process managers set in every rank (MPICH/hydra, Intel MPI,
# Open MPI, PMIx, MVAPICH).
_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MPI_SEGMENTS: list = []  # this rank's MPI shared-memory files, in a direct run
# The only files a job's clean-up may unlink: MPICH's segments and the topology file that
# hydra's proxy writes with mkstemp (a hard-coded /tmp) and removes only when the job ends well.
_SEGMENT = re.compile(r"/dev/shm/mpich_shm_[A-Za-z0-9_]+|/tmp/hydra_hwloc_xmlfile_[A-Za-z0-9]+")


def mpi_segments() -> list[str]:
    """MPICH's files of this rank (Linux): the /dev/shm segments it has mapped and the topology
    file its hydra proxy (the parent process) holds open."""
    try:
        with open("/proc/self/maps") as f:
            mapped = {row[-1] for row in map(str.split, f) if len(row) == 6}
    except OSError:
        return []
    proxy_fds = f"/proc/{os.getppid()}/fd"
    try:
        held = {os.readlink(os.path.join(proxy_fds, fd)) for fd in os.listdir(proxy_fds)}
    except OSError:  # gone, or not ours to read
        held = set()
    return sorted(path for path in mapped | held if _SEGMENT.fullmatch(path))


def is_segment(path: str, uid: int | None = None) -> bool:
    """True if ``path`` is an MPI segment this user may remove: an MPICH name directly in
    /dev/shm (or hydra's topology file), a regular file (not a link) owned by ``uid``."""
    if not isinstance(path, str) or not _SEGMENT.fullmatch(path):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == (os.geteuid() if uid is None else uid)


def unlink_segments(paths) -> None:
    """Remove the MPI segments among ``paths`` (anything else is left alone, see
    ``is_segment``); the ranks that mapped them keep their mappings."""
    for path in paths:
        if is_segment(path):
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
