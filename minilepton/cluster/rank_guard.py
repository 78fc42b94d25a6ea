"""The guard of a rank in a direct MPI run: the process mpiexec started stays on as its parent.

    hydra's proxy ── guard (the process mpiexec started) ── the rank (MPI, the training)

In a direct run (``mpiexec -n P python -m minilepton ...``) no launcher watches the ranks. A
rank killed by a signal cannot report itself; hydra then kills the others within milliseconds
and names a process id, not always the one that died first. Only a parent learns how its child
ended, so before MPI starts ``guard_this_rank`` forks: the child carries on as the rank, and the
parent, which mpiexec knows as the rank, waits for it. When the rank has been killed by a signal

- the guard prints one line on stderr, ``minilepton: rank 1 (pid 4242, started as 4241) died:
  killed by signal 9 (SIGKILL)`` (4241: the guard, the pid mpiexec names), unless the guard got
  that signal too (mpiexec stopping the job signals both);
- it unlinks the MPI library's files the rank listed (``tell``), which the rank cannot do now
  (only MPICH's own files of this user: ``mpi_segments.unlink_segments``);
- it ends by the same signal (or exit status, when the rank exits), so mpiexec sees what it would
  have seen. The guard holds the rank's stdout, stderr and PMI connection meanwhile: mpiexec
  learns of the death only after the line is out, and stops the other ranks then.

A stop signal (mpiexec sends SIGTERM or SIGINT to the rank's process group: the guard and the
rank) is only noted by the guard; a rank still alive ``STOP_GRACE_S`` later is killed. The rank
dies with its guard (``PR_SET_PDEATHSIG``), so killing the process mpiexec knows still stops
the rank. There is no guard other than on Linux, in a program that runs threads of its own, or
once MPI has started.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading

from .mpi_segments import mpi_segments, unlink_segments
from .signals import die_with_parent

_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # how mpiexec stops a whole job
# After a stop signal, how long the rank may take to end before its guard kills it (a rank
# waiting in MPI_Init for a peer that has already exited would wait for ever).
STOP_GRACE_S = 3.0
_GUARD: dict = {}  # in the rank: "pipe" (the write end to its guard), "manager" (hydra's pid)


def guard_this_rank(rank_hint: str) -> None:
    """Fork; the parent guards the child until it ends and never returns from here. The child
    (the rank) returns. ``rank_hint``: the rank as the environment says (until ``tell``)."""
    if (not sys.platform.startswith("linux") or _GUARD or threading.active_count() > 1
            or threading.current_thread() is not threading.main_thread()):
        return  # (a fork would leave the other threads of a program behind)
    manager, guard = os.getppid(), os.getpid()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(write_end)
        _guard(child, read_end, rank_hint)  # does not return
    os.close(read_end)
    die_with_parent(signal.SIGKILL, guard)  # (ends here if the guard is already gone)
    _GUARD.update(pipe=write_end, manager=manager)


def manager_pid() -> int:
    """The process manager's process (hydra's proxy) of this rank: its guard's parent."""
    return _GUARD.get("manager", os.getppid())


def tell(rank: int, segments) -> None:
    """From the rank, once MPI has started: its rank and its MPI files, for the guard."""
    if "pipe" in _GUARD:
        text = " ".join([str(rank), *segments]).encode()
        while text:
            text = text[os.write(_GUARD["pipe"], text):]


def _guard(child: int, read_end: int, rank_hint: str) -> None:
    """Wait for the rank, report a death by a signal, clean up, end as it ended."""
    received: list = []  # the stop signals the guard got (the rank got them too)
    stuck: list = []     # the rank's MPI files, when the guard had to kill it
    manager = os.getppid()

    def on_stop(signum, frame):
        if not received:  # the rank stops now, or soon: else it is stuck in C (MPI_Init)
            signal.setitimer(signal.ITIMER_REAL, STOP_GRACE_S)
        received.append(signum)

    def on_alarm(signum, frame):
        stuck.append(mpi_segments(manager, pid=child))
        os.kill(child, signal.SIGKILL)

    for sig in _STOPS:
        signal.signal(sig, on_stop)
    signal.signal(signal.SIGALRM, on_alarm)
    try:
        _, status = os.waitpid(child, 0)
    except ChildProcessError:
        os._exit(1)
    signal.setitimer(signal.ITIMER_REAL, 0)
    rank, *segments = _read_all(read_end).split() or [rank_hint]
    if not os.WIFSIGNALED(status):
        os._exit(os.waitstatus_to_exitcode(status))
    sig = os.WTERMSIG(status)
    if not received:
        _say(f"minilepton: rank {rank} (pid {child}, started as {os.getpid()}) died: killed by "
             f"signal {sig} ({_name(sig)})\n")
    unlink_segments(segments + [path for paths in stuck for path in paths])
    _end_by(received[0] if received else sig)


def _read_all(fd: int) -> str:
    """What the rank wrote (without waiting: a process it forked may hold the pipe open)."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode(errors="replace")


def _name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "a real-time signal"


def _say(line: str) -> None:
    try:
        os.write(2, line.encode())
    except OSError:
        pass


def _end_by(sig: int) -> None:
    """End this process by ``sig`` (without a core file: the rank's is the one that matters)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sig not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
    os.kill(os.getpid(), sig)
    os._exit(128 + sig)  # a signal whose default action is not to end the process
