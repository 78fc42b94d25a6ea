"""``launch(fn, world_size, ...)``: worker processes as the nodes of a cluster, supervised.

The launcher creates the job's shared-memory arena, starts ``world_size`` workers, and then
only watches: each worker's pipe (its one result or error message) and its process sentinel
(it exited). Nothing hangs and nothing leaks:

- a worker raises: its error arrives through the pipe; the others are stopped and
  ``WorkerError`` names the rank, the exception and the worker's traceback;
- a worker dies by a signal (or exits) without a message: the same, naming the signal;
- a worker stalls while alive: its peers' next collective gives up after ``timeout_s`` with a
  ``CommError`` naming the ranks that did not arrive, which the launcher reports as above;
- Ctrl-C on the launcher: the workers are stopped and ``KeyboardInterrupt`` propagates (the
  CLI turns it into exit code 130).

In every case the workers are terminated (then killed) and joined, and the arena is unlinked,
before ``launch`` returns or raises. Workers also die if the launcher itself is killed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import wait as wait_ready

from .. import environment
from ..comm.base import stalled_ranks
from ..comm.shm import ShmConfig
from ..comm.shm.arena import Arena, reap_orphans
from ..files import check_writable
from . import blas, logs, signals, simulate
from .errors import WorkerError, blame
from .mpi_launch import check_seconds, launch_mpi
from .worker import WorkerSpec, worker_main

STOP_GRACE_S = 2.0
REPORT_GRACE_S = 0.5  # after a stall report, how long the others may take to report theirs
BACKENDS = ("shm", "mpi")


def launch(fn, world_size, args=(), backend="shm", *, timeout_s=None, start_method=None,
           blas_threads=None, link=None, node_speeds=None, log_dir=None, env=None,
           arena_bytes=None, config: ShmConfig | None = None, pin_cores: bool | None = None,
           **mpi_options):
    """Run ``fn(comm, *args)`` in ``world_size`` worker processes; their results in rank order.

    ``timeout_s``: how long a collective waits for a stalled peer (default 60 s, or
    ``MINILEPTON_COMM_TIMEOUT_S``). ``start_method``: ``"fork"`` (Linux default) or
    ``"spawn"`` (needed for CUDA; ``fn`` must then be importable). ``blas_threads``: BLAS
    threads per worker (default: cores // world_size, at least 1). ``link``: a simulated
    interconnect (``simulate.PROFILES`` name or ``LinkModel``); ``node_speeds``: one speed
    factor per rank. ``log_dir``: one log file per rank. ``env``: extra environment variables
    for the workers. ``arena_bytes``: the shared-memory arena's (virtual) size. ``pin_cores``:
    give each worker its own cores (default: when there are at least as many cores as workers,
    so that a worker polling for its peer never sits on the core that peer needs).
    ``mpi_options``: options of the MPI launcher alone (``algorithm=``, ``job_timeout_s=``; see
    ``mpi_launch.launch_mpi``). Environment variables the workers would read are checked first
    (``minilepton.environment``): a bad one is refused in one line before any process starts.
    """
    environment.check({**os.environ, **(env or {})})
    if log_dir is not None:
        check_writable(log_dir, "log_dir", directory=True)
    if backend == "mpi":
        with signals.sigterm_unwinds():
            return launch_mpi(fn, world_size, args, timeout_s=timeout_s,
                              start_method=start_method, blas_threads=blas_threads, link=link,
                              node_speeds=node_speeds, log_dir=log_dir, env=env, **mpi_options)
    if mpi_options:
        raise TypeError(f"launch: {', '.join(sorted(mpi_options))} apply to backend='mpi' only")
    if backend != "shm":
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    check_seconds("timeout_s", timeout_s)
    config = dataclasses.replace(config) if config else ShmConfig()  # ours to fill in
    if timeout_s is not None:
        config.timeout_s = float(timeout_s)
    config.resolve(world_size, blas.cores())  # by the job's size: sub-groups share the cores
    spec_link = simulate.link_model(link)
    speeds = simulate.check_node_speeds(node_speeds, world_size)
    threads = blas.share(world_size, blas_threads)
    blas.prepare()
    ctx = mp.get_context(start_method)
    reap_orphans()
    job = _Job(world_size, ctx)
    with signals.sigterm_unwinds():
        try:
            job.arena = arena = Arena.create(arena_bytes)
            offset = arena.alloc(config.block_bytes(world_size), "the job's control block",
                                 reserve=False)
            spec = WorkerSpec(arena.name, offset, config, threads, logs.root_level(), os.getpid(),
                              blas.core_sets(world_size, pin_cores), log_dir, spec_link, speeds,
                              dict(env or {}))
            job.start(fn, tuple(args), spec)
            results = job.supervise()
            job.finished = True
            return results
        finally:
            job.stop()


class _Job:
    """The processes, pipes and arena of one launch, and how to stop them."""

    def __init__(self, world_size, ctx):
        self.world_size, self.ctx = world_size, ctx
        self.arena = self.relay = None
        self.procs, self.conns = [], []
        self.finished = False  # every worker reported success: let them exit on their own

    def start(self, fn, args, spec):
        self.relay = logs.LogRelay(self.ctx)
        extra = {**blas.thread_env(spec.blas_threads), **spec.env,
                 "WORLD_SIZE": str(self.world_size)}
        saved = {k: os.environ.get(k) for k in (*extra, "RANK", "LOCAL_RANK")}
        try:  # a spawned worker reads the environment before it imports NumPy
            os.environ.update(extra)
            for rank in range(self.world_size):
                os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
                recv_end, send_end = self.ctx.Pipe(duplex=False)
                proc = self.ctx.Process(
                    target=worker_main, name=f"minilepton-rank{rank}",
                    args=(rank, self.world_size, fn, args, spec, send_end, self.relay.queue))
                self.procs.append(proc)
                self.conns.append(recv_end)
                proc.start()
                send_end.close()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def supervise(self):
        results, pending = [None] * self.world_size, set(range(self.world_size))
        while pending:
            watch = {}
            for r in pending:
                watch[self.conns[r]] = r
                watch[self.procs[r].sentinel] = r
            for ready in wait_ready(list(watch), timeout=1.0):
                r = watch[ready]
                if r not in pending:
                    continue
                message = self._message(r)
                if message is None:  # exited without a word: killed, or os._exit
                    raise WorkerError(r, self._exit_text(r))
                if message[0] == "ok":
                    results[r] = message[1]
                    pending.discard(r)
                else:
                    raise self._blame(r, message, pending - {r})
        return results

    def _blame(self, r, message, others):
        """WorkerError for rank ``r``'s error, or for the rank that stalled when ``r`` (and
        every other rank that reports within ``REPORT_GRACE_S``) says that rank did not arrive
        (``errors.blame``): the header names the cause, the text keeps who noticed."""
        reports = {r: message}
        if stalled_ranks(message[2]):
            deadline = time.monotonic() + REPORT_GRACE_S
            while others and time.monotonic() < deadline:
                for ready in wait_ready([self.conns[o] for o in others],
                                        max(0.0, deadline - time.monotonic())):
                    o = self.conns.index(ready)
                    others.discard(o)
                    reports[o] = self._message(o)
        errors = {o: m for o, m in reports.items() if m is not None and m[0] == "error"}
        return blame(r, {o: (f"{kind}: {text}", f"{kind}: {text}\n\nworker traceback:\n{trace}")
                         for o, (_, kind, text, trace) in errors.items()}, heard=reports)

    def _message(self, r):
        conn = self.conns[r]
        try:
            if conn.poll():
                return conn.recv()
        except (EOFError, OSError):
            pass
        self.procs[r].join(0.5)  # the sentinel fired: give the pipe a moment to drain
        try:
            return conn.recv() if conn.poll(0.1) else None
        except (EOFError, OSError):
            return None

    def _exit_text(self, r):
        code = self.procs[r].exitcode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "an unknown signal"
            return f"killed by signal {-code} ({name}) before it could report"
        return f"exited with code {code} before it could report"

    def stop(self):
        """Unlink the arena; terminate, kill and join every worker; stop the log relay."""
        with signals.held():
            try:
                if self.arena is not None:  # first: the workers have mapped it, or are stopping
                    self.arena.unlink()
                    self.arena.close()
                if self.finished:  # they are flushing their logs and exiting
                    deadline = time.monotonic() + STOP_GRACE_S
                    for p in self.procs:
                        p.join(max(0.0, deadline - time.monotonic()))
                alive = [p for p in self.procs if p.is_alive()]
                for p in alive:
                    p.terminate()
                deadline = time.monotonic() + STOP_GRACE_S
                for p in alive:
                    p.join(max(0.0, deadline - time.monotonic()))
                for p in self.procs:
                    if p.is_alive():
                        p.kill()
                        p.join()  # SIGKILL cannot be refused: this returns
            finally:
                for conn in self.conns:
                    conn.close()
                for p in self.procs:
                    if p.exitcode is not None:
                        p.close()
                if self.relay is not None:
                    self.relay.stop()
