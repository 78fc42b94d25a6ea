"""The rank side of MPI jobs started by ``launch_mpi`` (direct runs: ``mpi_direct``).

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
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import time
import traceback
from multiprocessing import spawn

from ..comm.mpi import MPICommunicator
from ..files import atomic_write
from . import simulate
from .logs import FILE_FORMAT, RankPrefix, rank_file_handler
from .malloc import keep_freed_memory
from .mpi_direct import local_rank
from .mpi_segments import mpi_segments


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that the launcher never reads half a file."""
    atomic_write(path, lambda f: f.write(data))


def setup_logging(rank: int, level: int, log_dir: str | None) -> None:
    """Log records go to stderr (which mpiexec forwards to the launcher's console) with a
    ``[rank k]`` prefix, and optionally to ``log_dir/rank{k}.log`` as the shm workers write it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers = [(logging.StreamHandler(sys.stderr), "%(message)s")]
    if log_dir:
        handlers.append((rank_file_handler(log_dir, rank), FILE_FORMAT))
    prefix = RankPrefix(rank)
    for handler, fmt in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        handler.addFilter(prefix)
        root.addHandler(handler)
    root.setLevel(level)


def _apply_simulation(comm, options: dict):
    """The simulated cluster's link model and node speed factor, when the job asked for them."""
    if not options.get("link") and not options.get("node_speeds"):
        return comm
    return simulate.wrap(comm, link=options.get("link"), node_speeds=options.get("node_speeds"))


# ---- a rank of a job started by launch_mpi
def run(payload_path: str, result_dir: str) -> None:
    from mpi4py import MPI  # optional dependency; importing it starts MPI

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(local_rank(world)))
    write_atomic(os.path.join(result_dir, f"rank{rank}.pid"), str(os.getpid()).encode())
    write_atomic(os.path.join(result_dir, f"rank{rank}.shm"), "\n".join(mpi_segments()).encode())
    _wait_until_watched(result_dir, rank)
    result_path = os.path.join(result_dir, f"rank{rank}.pkl")
    try:
        with open(payload_path, "rb") as f:
            payload = pickle.load(f)
        _prepare(payload["prep"])
        keep_freed_memory()
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
        write_atomic(result_path, pickle.dumps(record))  # the launcher reports it
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
    spawn.prepare(prep)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m minilepton.cluster.mpi_worker PAYLOAD RESULT_DIR")
    run(sys.argv[1], sys.argv[2])
