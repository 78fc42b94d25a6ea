"""The Communicator protocol every backend implements, and the counters they share.

A communicator connects the ``world_size`` workers of one job (or of a sub-group made with
``split``). Collectives are called by every rank of the group, in the same order:

- ``allreduce(x, op)``: every rank ends with op(x₀, …, x_{P−1}) in ``x`` (in place; returned).
- ``reduce_scatter(x, op)``: ``x`` (length divisible by P on axis 0) is reduced; rank r gets
  block r (a new array of ``len(x) // P`` rows).
- ``allgather(x)``: rank r contributes ``x``; everyone gets the P blocks stacked on axis 0.
- ``broadcast(x, root)``: root's ``x`` is copied into every rank's ``x`` (in place; returned).
- ``send(x, dst)`` / ``recv(x, src)``: point to point; ``recv`` fills ``x`` in place.
- ``barrier()``; ``split(color, key)`` -> a new communicator over the ranks with the same color,
  ordered by ``(key, rank)``.
- ``zeros(shape, dtype)``: an array the backend can move without a private copy (shared memory
  for shm; an ordinary array for MPI).

Reductions combine ranks in the fixed order 0, 1, …, P−1, so every rank gets the same bits, run
after run. ``sum``, ``mean`` (sum then divide by P) and ``max`` are supported.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field

import numpy as np

from .. import environment

OPS = ("sum", "mean", "max")

yield_core = getattr(os, "sched_yield", lambda: time.sleep(0))  # let a peer on this core run


def timeout_default() -> float:
    """Seconds a collective waits for its peers: ``MINILEPTON_COMM_TIMEOUT_S`` or 60 (a value
    that is not a finite number > 0 is refused, naming the variable: ``environment``)."""
    return environment.read("MINILEPTON_COMM_TIMEOUT_S", 60.0)


def verbose_default() -> bool:
    """``MINILEPTON_VERBOSE=1``: every backend logs each operation with its size and path."""
    return environment.read("MINILEPTON_VERBOSE", 0) > 0


class CommError(RuntimeError):
    """A collective failed: a peer died, stalled past the timeout, or the call was misused.

    A stall is worded ``"<op>: rank(s) [r, ...] did not arrive within T s ..."`` (the ranks
    of the job), which ``stalled_ranks`` reads back, so that a launcher can name the rank that
    stalled rather than the one that noticed."""


_STALL = re.compile(r"rank\(s\) \[([\d, ]*)\] did not arrive")


def stalled_ranks(message: str) -> list | None:
    """The ranks a CommError's ``message`` says did not arrive, or None if it is no stall."""
    match = _STALL.search(message)
    return None if match is None else [int(r) for r in match.group(1).split(",") if r.strip()]


@dataclass
class CommStats:
    """What one rank moved: bytes and messages it sent, per operation name, and time spent.

    ``record`` is the one way in: every collective of every backend, fast path or not,
    counts itself through it (most through ``Communicator._timed``)."""

    bytes_sent: int = 0
    messages_sent: int = 0
    calls: dict = field(default_factory=dict)    # op name -> number of calls
    seconds: dict = field(default_factory=dict)  # op name -> wall seconds inside the op

    def record(self, op: str, nbytes: int, messages: int, seconds: float) -> None:
        """One operation ``op`` sent ``nbytes`` in ``messages`` and took ``seconds``."""
        self.bytes_sent += int(nbytes)
        self.messages_sent += int(messages)
        calls, secs = self.calls, self.seconds
        calls[op] = calls.get(op, 0) + 1
        secs[op] = secs.get(op, 0.0) + seconds

    def reset(self) -> None:
        self.bytes_sent = 0
        self.messages_sent = 0
        self.calls.clear()
        self.seconds.clear()

    def as_dict(self) -> dict:
        return {"bytes_sent": self.bytes_sent, "messages_sent": self.messages_sent,
                "calls": dict(self.calls), "seconds": dict(self.seconds)}


class Communicator:
    """Base class: rank, world size, counters, timeline hooks, and argument checks.

    Backends implement the collectives; they call ``self._timed(op, nbytes, messages)`` as a
    context manager around each one so that counters and the timeline see every message (a
    path that skips it, when no hook or link is watching, calls ``stats.record`` itself).
    ``hooks`` is a list of callables ``hook(event, op, rank, t_s, nbytes)`` with ``event`` in
    ``{"start", "end"}``; the tracer (``minilepton.trace``) registers one.
    """

    backend_name = "base"

    link = None  # a ``minilepton.cluster.simulate.LinkModel`` to delay operations, or None

    def __init__(self, rank: int, world_size: int):
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.stats = CommStats()
        self.hooks: list = []

    # ---- helpers shared by the backends
    def _timed(self, op: str, nbytes: int, messages: int, critical=None):
        """Time one operation. With a simulated ``link``, the operation lasts at least as long
        as the link would take for ``critical = (messages, nbytes)`` on its slowest rank
        (default: this rank's own ``(messages, nbytes)``)."""
        return _Timed(self, op, nbytes, messages, critical)

    @staticmethod
    def check_op(op: str) -> str:
        if op not in OPS:
            raise ValueError(f"unknown reduction op {op!r}; choose one of {', '.join(OPS)}")
        return op

    @staticmethod
    def check_array(x, what: str = "collective") -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{what} needs a NumPy array, not {type(x).__name__}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{what} needs a C-contiguous array (use np.ascontiguousarray)")
        return x

    @staticmethod
    def check_mean_dtype(x, op: str) -> None:
        if op == "mean" and x.dtype.kind != "f":
            raise ValueError(f"op='mean' needs a floating array, not {x.dtype}")

    def check_peer(self, peer: int, what: str) -> int:
        if not 0 <= int(peer) < self.world_size:
            raise ValueError(f"{what}: rank {peer} is outside 0..{self.world_size - 1}")
        if int(peer) == self.rank and what in ("send", "recv"):
            raise ValueError(f"{what}: rank {self.rank} cannot {what} to itself")
        return int(peer)

    # ---- the protocol (backends override)
    def allreduce(self, x, op: str = "sum", algorithm: str | None = None):
        raise NotImplementedError

    def reduce_scatter(self, x, op: str = "sum"):
        raise NotImplementedError

    def allgather(self, x):
        raise NotImplementedError

    def broadcast(self, x, root: int = 0):
        raise NotImplementedError

    def send(self, x, dst: int) -> None:
        raise NotImplementedError

    def recv(self, x, src: int):
        raise NotImplementedError

    def barrier(self) -> None:
        raise NotImplementedError

    def split(self, color: int, key: int | None = None) -> Communicator:
        raise NotImplementedError

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def close(self) -> None:
        """Release what this communicator holds (idempotent)."""

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.world_size}>"


class _Timed:
    """Context manager that times one operation, updates the counters and fires the hooks."""

    __slots__ = ("comm", "critical", "messages", "nbytes", "op", "t0")

    def __init__(self, comm, op, nbytes, messages, critical=None):
        self.comm, self.op, self.nbytes, self.messages = comm, op, nbytes, messages
        self.critical = critical

    def __enter__(self):
        self.t0 = time.perf_counter()
        for hook in self.comm.hooks:
            hook("start", self.op, self.comm.rank, self.t0, self.nbytes)
        return self

    def __exit__(self, exc_type, exc, tb):
        t1 = time.perf_counter()
        link = self.comm.link
        if link is not None and exc_type is None:
            messages, nbytes = self.critical or (self.messages, self.nbytes)
            extra_s = link.seconds(messages, nbytes) - (t1 - self.t0)
            if extra_s > 0:
                time.sleep(extra_s)
                t1 = time.perf_counter()
        self.comm.stats.record(self.op, self.nbytes, self.messages, t1 - self.t0)
        for hook in self.comm.hooks:
            hook("end", self.op, self.comm.rank, t1, self.nbytes)
        return False
