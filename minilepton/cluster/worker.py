"""What runs inside one worker process: set up, call ``fn(comm, *args)``, report back.

The worker ignores SIGINT (Ctrl-C reaches the whole terminal's process group; the launcher
alone decides how the job stops), asks Linux to kill it if the launcher dies, caps its BLAS
threads, routes its logging to the launcher, maps the job's arena, and sends exactly one
message through its pipe: ``("ok", result)`` or ``("error", type, message, traceback)``.
"""

from __future__ import annotations

import os
import signal
import traceback
from dataclasses import dataclass, field

from ..comm.shm import Arena, ShmConfig, world_communicator
from ..comm.shm.single_copy import let_job_read
from . import blas, logs, signals, simulate
from .malloc import keep_freed_memory


@dataclass
class WorkerSpec:
    """Everything a worker needs besides ``fn`` and ``args`` (picklable, for spawn)."""

    arena_name: str
    world_offset: int
    config: ShmConfig
    blas_threads: int
    log_level: int
    parent_pid: int
    cores: tuple = ()  # pin this worker to these cores ((): no pinning), one list per rank
    log_dir: str | None = None
    link: object = None
    node_speeds: list | None = None
    env: dict = field(default_factory=dict)


def worker_main(rank, world_size, fn, args, spec: WorkerSpec, conn, log_queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signals.die_with_parent(signal.SIGKILL, spec.parent_pid)  # no orphaned workers
    let_job_read(spec.parent_pid)  # the other workers may read this one (single_copy)
    os.environ.update(spec.env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    comm = None
    try:  # a failure while setting up is reported like any other
        if spec.cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, spec.cores[rank])
        blas.limit_threads(spec.blas_threads)
        keep_freed_memory()
        logs.setup_worker(rank, log_queue, spec.log_level, spec.log_dir)
        arena = Arena.attach(spec.arena_name)
        comm = world_communicator(arena, rank, world_size, spec.world_offset, spec.config)
        simulate.wrap(comm, spec.link, spec.node_speeds)
        message = ("ok", fn(comm, *args))
    except BaseException as exc:  # noqa: BLE001 - everything is reported to the launcher
        message = ("error", type(exc).__name__, str(exc), traceback.format_exc())
    try:
        conn.send(message)
    except Exception as exc:  # noqa: BLE001 - the result could not be pickled
        conn.send(("error", type(exc).__name__, f"could not send the result back: {exc}",
                   traceback.format_exc()))
    finally:
        conn.close()
        if comm is not None:
            comm.close()
