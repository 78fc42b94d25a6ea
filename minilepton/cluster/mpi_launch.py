"""Run ``fn(comm, *args)`` on P MPI ranks started by ``mpiexec``, and recognise direct MPI runs.

``launch(fn, P, args, backend="mpi")`` lands in ``launch_mpi``: it pickles ``(fn, args)`` to a
temporary directory, runs ``mpiexec -n P python -m minilepton.cluster.mpi_worker PAYLOAD DIR``
and collects each rank's pickled return value (``mpi_worker`` describes the files). The job is
supervised like the shared-memory one (``mpi_watch`` runs and watches mpiexec):

- a rank that raises aborts the whole MPI job; ``WorkerError(rank, message)`` names it, with the
  exception and its traceback;
- a rank killed by a signal: named as the first rank whose process ended without a result (the
  launcher watches the ranks' process ids), with mpiexec's exit string. MPICH's mpiexec (hydra)
  runs with ``-disable-auto-cleanup``, so it does not kill the other ranks at once, which would
  race with the launcher's watch; the launcher sees the rank die, then kills the rest itself;
- a collective that waits past ``timeout_s`` fails on its rank, which aborts the job; its
  ``CommError`` names the ranks that did not arrive, and the error blames the one that stalled,
  not the one that noticed (``errors.blame``, as on shm); past ``job_timeout_s`` (or on
  Ctrl-C) mpiexec is asked to stop its ranks, then killed, and any rank still alive is killed
  by its process id (hydra gives each rank its own session, so killing mpiexec's process group
  alone would not reach them). The temporary directory always goes;
- if the launcher itself is killed, Linux sends mpiexec SIGTERM (``PR_SET_PDEATHSIG``), which
  stops the ranks, and the next launch removes the dead job's directory and MPI segments (only
  folders of this user named as ours, and only MPICH's own files: ``mpi_segments.is_segment``).

Direct runs (``mpiexec -n 4 python -m minilepton train ...``) have no launcher process:
``in_mpi_job()``, ``world_from_mpi()`` and ``run_direct(fn, args)`` (defined in ``mpi_direct``,
and importable from here) let the program run as one rank.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import pickle
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from multiprocessing import spawn

from . import blas, signals, simulate
from .errors import WorkerError, blame
from .mpi_direct import in_mpi_job, run_direct, world_from_mpi
from .mpi_segments import unlink_segments
from .mpi_watch import rank_pids, run_mpiexec

__all__ = ["find_mpiexec", "in_mpi_job", "launch_mpi", "run_direct", "world_from_mpi"]

_JOB_PREFIX = "minilepton-mpi-"
_JOB_NAME = re.compile(re.escape(_JOB_PREFIX) + r"[a-z0-9_]{8}")  # as mkdtemp names it


def find_mpiexec() -> str | None:
    """The ``mpiexec`` next to this Python (where the ``mpich`` wheel puts it), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def check_seconds(name: str, value) -> None:
    """ValueError unless ``value`` is None or a finite number of seconds > 0 (nan is refused:
    it would never time out)."""
    if value is not None and not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")


@functools.cache
def _is_hydra(mpiexec: str) -> bool:
    """MPICH's launcher (hydra): it can leave the other ranks alive when one dies, so that this
    launcher, watching them, names the rank that died first and then stops the rest itself."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30,
                             check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return "hydra" in (out.stdout + out.stderr).lower()


def _preparation_data(fn) -> dict:
    """What a spawned child needs to import what the parent could (see multiprocessing.spawn).

    The launcher's ``__main__`` is re-imported in each rank (as the spawn start method does, so
    it needs an ``if __name__ == "__main__":`` guard) only when ``fn`` is defined there.
    """
    prep = spawn.get_preparation_data("minilepton-mpi-worker")
    if getattr(fn, "__module__", None) != "__main__" or \
            not os.path.isfile(prep.get("init_main_from_path", "")):
        prep.pop("init_main_from_path", None)
    if getattr(fn, "__module__", None) != "__main__":
        prep.pop("init_main_from_name", None)
    prep.pop("start_method", None)
    prep.pop("authkey", None)  # a secret of this process; the ranks never talk to it
    return prep


def launch_mpi(fn, world_size: int, args=(), *, timeout_s: float | None = None,
               blas_threads: int | None = None, link=None, node_speeds=None,
               log_dir: str | None = None, env: dict | None = None,
               algorithm: str = "ordered", job_timeout_s: float | None = None, **_):
    """Run ``fn(comm, *args)`` on ``world_size`` MPI ranks; return the values in rank order.

    ``timeout_s``: how long a collective waits for a stalled peer before its rank fails (and
    aborts the job), as on shm (default 60 s or ``MINILEPTON_COMM_TIMEOUT_S``);
    ``job_timeout_s``: a limit on the whole job's wall time (default none); ``algorithm``: the
    communicator's default all-reduce. The other options mean what they mean for ``launch``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    check_seconds("timeout_s", timeout_s)
    check_seconds("job_timeout_s", job_timeout_s)
    simulate.link_model(link)  # bad options fail here, before any process starts
    simulate.check_node_speeds(node_speeds, world_size)
    threads = blas.share(world_size, blas_threads)
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise RuntimeError("backend 'mpi' needs mpiexec (pip install 'minilepton[mpi]')")
    _sweep_dead_jobs()
    job_dir = tempfile.mkdtemp(prefix=_JOB_PREFIX)
    try:
        payload = os.path.join(job_dir, "payload.pkl")
        with open(payload, "wb") as f:
            pickle.dump({"job": pickle.dumps((fn, tuple(args))), "prep": _preparation_data(fn),
                         "log_level": logging.getLogger().getEffectiveLevel(),
                         "log_dir": log_dir,
                         "comm_options": {"algorithm": algorithm, "timeout_s": timeout_s},
                         "simulation": {"link": link, "node_speeds": node_speeds}}, f)
        child_env = {**os.environ, **blas.thread_env(threads), **(env or {}),
                     "WORLD_SIZE": str(world_size)}
        own_cleanup = ["-disable-auto-cleanup"] if _is_hydra(mpiexec) else []
        cmd = [mpiexec, *own_cleanup, "-n", str(world_size), sys.executable, "-m",
               "minilepton.cluster.mpi_worker", payload, job_dir]
        try:
            returncode, tail, exited = run_mpiexec(cmd, child_env, job_dir, job_timeout_s)
        finally:
            with signals.held():
                _unlink_job_segments(job_dir)
        return _collect(job_dir, world_size, returncode, tail, exited)
    finally:
        with signals.held():
            shutil.rmtree(job_dir, ignore_errors=True)


def _sweep_dead_jobs(min_age_s: float = 60.0) -> None:
    """Remove job directories (and their MPI segments) of launchers that were killed: folders
    named as ``mkdtemp`` names ours, owned by this user (``lstat``: a link is never followed),
    older than ``min_age_s`` and named on no live process's command line. Another user's
    folder, or a path it lists that is no MPI segment of ours, is left alone."""
    tmp = tempfile.gettempdir()
    now, uid = time.time(), os.geteuid()
    stale = []
    for name in os.listdir(tmp):
        if not _JOB_NAME.fullmatch(name):
            continue
        path = os.path.join(tmp, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == uid and now - st.st_mtime > min_age_s:
            stale.append(path)
    if not stale:
        return
    live = b"\0".join(_cmdlines())
    for path in stale:
        if path.encode() not in live:
            _unlink_job_segments(path)
            shutil.rmtree(path, ignore_errors=True)


def _cmdlines():
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else ()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                yield f.read()
        except OSError:
            continue


def _unlink_job_segments(job_dir) -> None:
    """Unlink the MPI library's /dev/shm segments that an aborted or killed job leaves."""
    for name in os.listdir(job_dir):
        if name.endswith(".shm"):
            try:
                with open(os.path.join(job_dir, name)) as f:
                    unlink_segments(f.read().split())
            except OSError:
                continue


def _collect(job_dir, world_size, returncode, tail, exited):
    """The ranks' return values, or WorkerError for the first rank that failed."""
    records = {}
    for rank in range(world_size):
        path = os.path.join(job_dir, f"rank{rank}.pkl")
        if os.path.exists(path):
            with open(path, "rb") as f:
                records[rank] = pickle.load(f)
    errors = {rank: rec for rank, rec in records.items() if rec[0] == "error"}
    if errors:  # the first report, or the rank that stalled when the reports say so
        first = min(errors, key=lambda rank: errors[rank][1])
        raise blame(first, {rank: (summary, f"{summary}\n{trace}")
                            for rank, (_, _, summary, trace) in errors.items()}, heard=records)
    if returncode != 0 or len(records) < world_size:
        silent = next((ended - set(records) for ended in exited if ended - set(records)), set())
        raise WorkerError(*_explain_exit(job_dir, returncode, tail, silent))
    return [records[rank][1] for rank in range(world_size)]


def _explain_exit(job_dir, returncode, tail, silent):
    """(rank or None, message) for a job that ended without a Python exception: the rank that
    ended first without a result (``silent``: those seen ending first), else mpiexec's."""
    text = "".join(tail)
    pid = re.search(r"PID (\d+) RUNNING AT", text)
    exit_string = re.search(r"EXIT STRING: (.+)", text)
    pids = {pid: rank for rank, pid in rank_pids(job_dir).items()}
    named = pids.get(int(pid.group(1))) if pid else None
    rank = named if named in silent or not silent else min(silent)
    cause = exit_string.group(1).strip() if exit_string else f"mpiexec exit status {returncode}"
    if returncode < 0:
        cause = f"mpiexec killed by {signal.Signals(-returncode).name}"
    who = f"rank {rank}" if rank is not None else "a rank"
    return rank, f"{who} ended without a result: {cause}"
