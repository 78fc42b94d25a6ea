"""The rank side of MPI jobs: the worker that ``launch_mpi`` starts, and direct runs.

``mpiexec -n P python -m minilepton.cluster.mpi_worker PAYLOAD DIR`` starts P copies of this
module. Each one

1. joins MPI, sets RANK, WORLD_SIZE and LOCAL_RANK, and writes ``DIR/rank{r}.pid`` (so the
   launcher can name a rank that dies by its process id, and kill any straggler) and
   ``DIR/rank{r}.shm``, the MPI library's shared-memory segments (a job that ends in
   ``MPI_Abort`` or a signal leaves them in ``/dev/shm``; the launcher unlinks them), and
   waits until the launcher has written ``DIR/rank{r}.watched`` (it watches the process now);
2. rebuilds the launcher's import state (``sys.path``, working directory, ``__main__``) the way
   ``multiprocessing``'s spawn start method does, then unpickles ``(fn, args)`` from PAYLOAD;
3. runs ``fn(comm, *args)`` with an ``MPICommunicator`` over COMM_WORLD and writes
   ``DIR/rank{r}.pkl``: ``("ok", value)`` or ``("error", time, summary, traceback)``.

On any exception the rank writes its error and calls ``MPI_Abort``, which stops every rank: the
others may be blocked in a collective that will never complete.

Direct runs (``mpiexec -n 4 python -m minilepton train ...``): ``in_mpi_job()`` says this process
is a rank of an MPI job (from the environment alone), ``world_from_mpi()`` gives the
communicator over COMM_WORLD, and ``run_direct(fn, args)`` runs ``fn(comm, *args)`` here,
aborting every rank if it fails.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import traceback


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def setup_logging(rank: int, level: int, log_dir: str | None) -> None:
    """Log records go to stderr (which mpiexec forwards to the launcher's console) with a
    ``[rank k]`` prefix, and optionally to ``log_dir/rank{k}.log`` as the shm workers write it."""
    from .logs import FILE_FORMAT, RankPrefix  # noqa: PLC0415

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers = [(logging.StreamHandler(sys.stderr), "%(message)s")]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        handlers.append((logging.FileHandler(os.path.join(log_dir, f"rank{rank}.log")),
                         FILE_FORMAT))
    prefix = RankPrefix(rank)
    for handler, fmt in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(prefix)
        root.addHandler(handler)
    root.setLevel(level)


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


def _local_rank(world) -> int:
    """This rank's index among the ranks on the same node."""
    from mpi4py import MPI  # noqa: PLC0415

    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        return node.Get_rank()
    finally:
        node.Free()


def _apply_simulation(comm, options: dict):
    """The simulated cluster's link model and node speed factor, when the job asked for them."""
    if not options.get("link") and not options.get("node_speeds"):
        return comm
    from . import simulate  # noqa: PLC0415 - the simulated cluster, shared with the shm launcher

    return simulate.wrap(comm, link=options.get("link"), node_speeds=options.get("node_speeds"))


# ---- direct runs: `mpiexec -n P python -m minilepton ...`, every rank runs the program itself
# Environment variables that process managers set in every rank (MPICH/hydra, Intel MPI,
# Open MPI, PMIx, MVAPICH).
_MPI_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_MPI_SEGMENTS: list = []  # this rank's MPI shared-memory files, in a direct run


def in_mpi_job() -> bool:
    """True when this process was started by mpiexec/mpirun (reads the environment only)."""
    return any(name in os.environ for name in _MPI_RANK_VARS + _MPI_SIZE_VARS)


def world_from_mpi(algorithm: str = "ordered"):
    """An ``MPICommunicator`` over COMM_WORLD; sets RANK, WORLD_SIZE and LOCAL_RANK."""
    from ..comm.mpi import MPICommunicator  # noqa: PLC0415 - imports mpi4py, initialises MPI

    comm = MPICommunicator(None, algorithm)
    _MPI_SEGMENTS[:] = mpi_segments()  # mapped by MPI_Init; nothing else has run yet
    os.environ.update(RANK=str(comm.rank), WORLD_SIZE=str(comm.world_size),
                      LOCAL_RANK=str(_local_rank(comm.comm)))
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


# ---- a rank of a job started by launch_mpi
def run(payload_path: str, result_dir: str) -> None:
    from mpi4py import MPI  # noqa: PLC0415 - importing initialises MPI

    from ..comm.mpi import MPICommunicator  # noqa: PLC0415

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(_local_rank(world)))
    write_atomic(os.path.join(result_dir, f"rank{rank}.pid"), str(os.getpid()).encode())
    write_atomic(os.path.join(result_dir, f"rank{rank}.shm"), "\n".join(mpi_segments()).encode())
    _wait_until_watched(result_dir, rank)
    result_path = os.path.join(result_dir, f"rank{rank}.pkl")
    try:
        with open(payload_path, "rb") as f:
            payload = pickle.load(f)
        _prepare(payload["prep"])
        setup_logging(rank, payload["log_level"], payload["log_dir"])
        fn, args = pickle.loads(payload["job"])
        comm = _apply_simulation(MPICommunicator(world, **payload["comm_options"]),
                                 payload["simulation"])
        value = fn(comm, *args)
        comm.close()  # delivers sends still in flight
        write_atomic(result_path, pickle.dumps(("ok", value), protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher
        summary = f"{type(exc).__name__}: {exc}"
        record = ("error", time.time(), summary, traceback.format_exc())
        write_atomic(result_path, pickle.dumps(record))
        sys.stderr.write(f"[rank {rank}] {summary}\n")
        sys.stderr.flush()
        world.Abort(1)


def _wait_until_watched(result_dir: str, rank: int, timeout_s: float = 5.0) -> None:
    """Wait (bounded) until the launcher watches this process, so that if the job kills it at
    once the launcher still sees which rank ended first."""
    marker = os.path.join(result_dir, f"rank{rank}.watched")
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.001)


def _prepare(prep: dict) -> None:
    """Import state of the launcher (sys.path, cwd, __main__), as the spawn start method does."""
    from multiprocessing import spawn  # noqa: PLC0415

    spawn.prepare(prep)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m minilepton.cluster.mpi_worker PAYLOAD RESULT_DIR")
    run(sys.argv[1], sys.argv[2])
