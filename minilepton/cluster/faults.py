"""Deterministic fault injection: make a chosen worker fail at a chosen step, once per run.

``--fault KIND:rank=R:step=S`` (repeatable) names what happens to rank R when it has finished
training step S (counted from 1 over the whole run):

    raise   the worker raises ``InjectedFault`` (an exception, reported with its traceback)
    kill    the worker process is killed by SIGKILL (no Python cleanup at all)
    stall   the worker stops making progress (sleeps) until the job notices and stops it
    slow    the worker sleeps ``seconds`` (default 1) and carries on: a transient straggler

Each fault fires once per run: before firing, the worker creates a marker file for it in the
run's private folder (``O_CREAT | O_EXCL``), so a job restarted after the fault goes on past it
(a direct ``mpiexec`` run is never restarted and keeps no marker).
The marker holds the moment it fired (``time.time()``), which ``fired_at`` reads back.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

KINDS = ("raise", "kill", "stall", "slow")


class InjectedFault(RuntimeError):
    """The failure ``--fault raise:...`` asked for."""


@dataclass(frozen=True)
class Fault:
    kind: str
    rank: int
    step: int
    seconds: float = 1.0

    @property
    def spec(self) -> str:
        extra = f":seconds={self.seconds:g}" if self.kind == "slow" else ""
        return f"{self.kind}:rank={self.rank}:step={self.step}{extra}"


def parse_fault(spec: str) -> Fault:
    """``"kill:rank=1:step=5"`` -> ``Fault("kill", 1, 5)``; ValueError naming the problem."""
    kind, *fields = str(spec).split(":")
    if kind not in KINDS:
        raise ValueError(f"--fault {spec!r}: the kind must be one of {', '.join(KINDS)}")
    values = {}
    for item in fields:
        key, sep, value = item.partition("=")
        if not sep or key not in ("rank", "step", "seconds") or key in values:
            raise ValueError(f"--fault {spec!r}: expected KIND:rank=R:step=S[:seconds=T]")
        values[key] = value
    try:
        rank, step = int(values["rank"]), int(values["step"])
        seconds = float(values.get("seconds", 1.0))
    except (KeyError, ValueError):
        raise ValueError(f"--fault {spec!r}: rank and step must be integers "
                         "(KIND:rank=R:step=S)") from None
    if rank < 0 or step < 1 or not seconds >= 0 or (kind != "slow" and "seconds" in values):
        raise ValueError(f"--fault {spec!r}: needs rank >= 0, step >= 1 (and seconds >= 0, "
                         "for slow only)")
    return Fault(kind, rank, step, seconds)


def maybe_fire(faults, rank: int, step: int, marker_dir: str | None) -> None:
    """Fire the faults meant for ``rank`` after ``step`` that have not fired in this run.
    ``marker_dir`` None: no restart follows (a direct ``mpiexec`` run), so no marker is kept."""
    for index, fault in enumerate(faults):
        if fault.rank != rank or fault.step != step:
            continue
        if marker_dir is None:
            _fire(fault)
            continue
        marker = os.path.join(marker_dir, f"fault-{index}")
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue  # fired before a restart
        os.write(fd, repr(time.time()).encode())
        os.close(fd)
        _fire(fault)


def fired_at(marker_dir: str) -> dict:
    """``{fault index: unix time it fired}`` for the faults of this run that have fired."""
    out = {}
    for name in os.listdir(marker_dir):
        if name.startswith("fault-"):
            with open(os.path.join(marker_dir, name)) as f:
                out[int(name[len("fault-"):])] = float(f.read() or "nan")
    return out


def _fire(fault: Fault) -> None:
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault {fault.spec}")
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.kind == "slow":
        time.sleep(fault.seconds)
        return
    while True:  # stall: alive, silent, until the job stops this process
        time.sleep(3600)
