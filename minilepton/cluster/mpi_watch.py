"""Running ``mpiexec`` for ``launch_mpi``, and watching and stopping its ranks.

``run_mpiexec`` starts mpiexec in its own session, echoes its output (keeping the last lines
for error messages), and watches the ranks' processes by the ids they write to the job
directory (``rank{r}.pid``): a rank that ends without a result (killed by a signal) gets the
others killed at once, and the order in which ranks ended is kept, so the one that died first
is named. On the job's time limit or Ctrl-C: SIGINT to mpiexec (hydra passes it on), then
SIGKILL, then every rank still alive is killed by its process id.
"""

from __future__ import annotations

import collections
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

from . import signals
from .errors import WorkerError
from .procfs import running

STOP_GRACE_S = 3.0
_POLL_S = 0.01  # how often the launcher looks at mpiexec and the ranks' processes


def _die_with_launcher() -> None:
    """In mpiexec, before exec (Linux): SIGTERM when the launcher dies, so hydra stops the ranks."""
    signals.die_with_parent(signal.SIGTERM)


def run_mpiexec(cmd, env, job_dir, timeout_s):
    """Run mpiexec, echo its output, keep its last lines and the order in which ranks exited;
    stop everything on timeout or Ctrl-C."""
    # preexec_fn only calls prctl (no locks), so it is safe with the pump threads running
    die_with_launcher = _die_with_launcher if sys.platform == "linux" else None
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=die_with_launcher)  # noqa: PLW1509
    tail = collections.deque(maxlen=40)
    pumps = [threading.Thread(target=_pump, args=(stream, sink, tail), daemon=True)
             for stream, sink in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for pump in pumps:
        pump.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    watch = _ExitWatch(job_dir)
    try:
        while proc.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                _stop(proc, job_dir)
                raise WorkerError(None, f"MPI job did not finish within {timeout_s:g} s; "
                                        "stopped all ranks")
            watch.wait(_POLL_S)
            if _died_silently(job_dir, watch.exited):  # the others go now (again each poll,
                _kill_ranks(job_dir)  # for a rank still starting); mpiexec reports the first
        watch.wait(0)
    except BaseException:  # Ctrl-C, SIGTERM (or the timeout above): the ranks go with us
        with signals.held():
            _stop(proc, job_dir)
        raise
    finally:
        watch.close()
        for pump in pumps:
            pump.join(timeout=STOP_GRACE_S)
    return proc.returncode, list(tail), watch.exited


class _ExitWatch:
    """The order in which the ranks' processes end, as sets of ranks seen ending together.

    Where Linux has pidfds the kernel wakes the launcher the moment a rank ends, before mpiexec
    has killed the others, so the rank that died first is told apart; elsewhere /proc is polled.
    """

    def __init__(self, job_dir):
        self.job_dir, self.pids, self.fds, self.exited = job_dir, {}, {}, []
        self.poller = select.poll() if hasattr(select, "poll") else None

    def wait(self, timeout_s: float) -> None:
        for rank, pid in rank_pids(self.job_dir).items():
            if rank not in self.pids:
                self.pids[rank] = pid
                self._open(rank, pid)
                # the rank waits for this before it runs the job, so none ends unwatched
                open(os.path.join(self.job_dir, f"rank{rank}.watched"), "w").close()
        ready = set()
        if self.fds:  # the pidfds that woke us: the ranks that ended first
            ready = {self.fds[fd] for fd, _ in self.poller.poll(timeout_s * 1000)}
        elif timeout_s > 0:
            time.sleep(timeout_s)
        seen = set().union(*self.exited)
        watched = set(self.fds.values())
        ended = ready | {rank for rank, pid in self.pids.items() if rank not in seen and
                         rank not in watched and not running(pid)}
        if ended:
            self.exited.append(ended)
            for fd in [fd for fd, rank in self.fds.items() if rank in ended]:
                self.poller.unregister(fd)
                del self.fds[fd]
                os.close(fd)

    def _open(self, rank, pid) -> None:
        if self.poller is None or not hasattr(os, "pidfd_open"):
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # already gone (the check after polling sees it) or not supported
            return
        self.fds[fd] = rank
        self.poller.register(fd, select.POLLIN)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


# MPICH's own report of a rank's MPI_Abort: the launcher names the rank and its error itself
_ABORT_LINE = re.compile(r"Abort\(\d+\) on node \d+ \(rank \d+ in comm \d+\): application called")


def _pump(stream, sink, tail):
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        tail.append(line)
        if _ABORT_LINE.match(line):
            continue
        try:
            sink.write(line)
            sink.flush()
        except (ValueError, OSError):  # the sink was closed under us; keep draining
            pass
    stream.close()


def _died_silently(job_dir, exited) -> bool:
    """Has a rank's process ended without writing its result (killed by a signal)?"""
    return any(not os.path.exists(os.path.join(job_dir, f"rank{rank}.pkl"))
               for ended in exited for rank in ended)


def _stop(proc, job_dir):
    """SIGINT to mpiexec (hydra passes it to the ranks), then SIGKILL, then kill stragglers."""
    for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                pass
    _kill_ranks(job_dir)


def _kill_ranks(job_dir) -> None:
    """SIGKILL every rank of this job still alive, by its process id."""
    for pid in rank_pids(job_dir).values():
        if _is_our_worker(pid, job_dir):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def rank_pids(job_dir) -> dict:
    pids = {}
    for name in os.listdir(job_dir):
        match = re.fullmatch(r"rank(\d+)\.pid", name)
        if match:
            with open(os.path.join(job_dir, name)) as f:
                pids[int(match.group(1))] = int(f.read())
    return pids


def _is_our_worker(pid: int, job_dir: str) -> bool:
    """True if ``pid`` is still a worker of this job (guards against a reused process id)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return job_dir.encode() in f.read()
    except OSError:
        return False
