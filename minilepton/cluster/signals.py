"""How a launcher (shm or MPI) treats SIGTERM and Ctrl-C while its job runs.

- ``sigterm_unwinds()``: while the job runs, SIGTERM to the launcher raises ``SystemExit(143)``
  in its main thread, so the job is stopped and cleaned up as on Ctrl-C (the default action
  would kill the launcher at once and leave its workers' files behind). A handler someone else
  installed (the CLI's) is left in place.
- ``held()``: Ctrl-C and SIGTERM wait while a job is being cleaned up (a second one must not
  leave workers or files behind); they are delivered when the clean-up is done.
- ``die_with_parent(sig)``: a process that must not outlive its parent (mpiexec started by the
  MPI launcher, a rank under its guard) gets ``sig`` when the parent ends (Linux).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading

_HELD = {signal.SIGINT, signal.SIGTERM}
_PR_SET_PDEATHSIG = 1


@contextlib.contextmanager
def sigterm_unwinds():
    installed = (threading.current_thread() is threading.main_thread()
                 and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if installed:
        signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _stop(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def held():
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    except (AttributeError, ValueError, OSError):
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD - set(previous))


def die_with_parent(sig, parent_pid: int | None = None) -> None:
    """Linux: this process gets ``sig`` when its parent ends (``PR_SET_PDEATHSIG``); elsewhere
    nothing. With ``parent_pid``, a parent that ended before the call took effect ends this
    process at once. It only calls ``prctl``, so it may run between fork and exec."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
