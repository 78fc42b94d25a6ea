"""What ``/proc/PID/stat`` says of a process: its state and its parent (Linux).

The fields after the command name (which may hold spaces and parentheses, hence the split at
the last ``)``): ``stat_fields(pid)[0]`` is the state (``Z`` a zombie), ``[1]`` the parent pid.
"""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name; None when there is no such
    process (or it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def running(pid: int) -> bool:
    """Does ``pid`` exist and not yet wait as a zombie to be reaped?"""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def parent(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def is_descendant(pid: int, ancestor: int | None = None, depth: int = 4) -> bool:
    """Was ``pid`` started by ``ancestor`` (default: this process), up to ``depth`` levels?"""
    ancestor = os.getpid() if ancestor is None else ancestor
    for _ in range(depth):
        pid = parent(pid)
        if pid is None:
            return False
        if pid == ancestor:
            return True
    return False
