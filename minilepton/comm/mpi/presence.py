"""Who did not arrive: when an MPI wait times out, the ranks that are not waiting in MPI.

A nonblocking MPI collective does not say which peer it still waits for, so the communicator
asks. Every rank blocked in a wait (past its busy phase) answers the probes that reach it; a
rank whose wait times out probes every other rank of the job and gives them ``answer_s`` to
answer. A rank that does not is outside any communication: stalled, busy computing, or dead::

    rank 0 (timed out) ──probe k──> ranks 1, 2     rank 1 (waiting in MPI) ──k──> rank 0
                                                   rank 2 (asleep)    ... no answer
    -> CommError "allreduce on rank 0: rank(s) [2] did not arrive within 60 s ..."

which is the wording of the shared-memory backend, so a launcher blames rank 2, not rank 0
(``cluster.errors.blame``). Probes travel on a duplicate of the job's communicator: they never
match a data message. This is the supervisor's rule for a stall (a rank that stopped while it
was not waiting on its peers) asked of the ranks themselves, so it holds across nodes and in
direct ``mpiexec`` runs too.
"""

from __future__ import annotations

import threading
import time

import numpy as np

PROBE_TAG, ANSWER_TAG = 1, 2
ANSWER_S = 1.0  # the most a timed-out wait gives the others to answer


class Presence:
    """The probe channel of one job: made once over the job's communicator (a collective),
    shared by every communicator split from it."""

    def __init__(self, MPI, comm):
        self.MPI, self.channel = MPI, comm.Dup()
        self.rank, self.size = self.channel.Get_rank(), self.channel.Get_size()
        self._probe = 0
        self._in_flight: list = []  # (request, buffer) of probes and answers being sent
        self._lock = threading.Lock()  # a backward thread may wait while the main thread does

    def job_ranks(self, comm) -> list[int]:
        """The job's rank of each rank of ``comm`` (a communicator split from the job's)."""
        mine, job = comm.Get_group(), self.channel.Get_group()
        try:
            return [int(r) for r in mine.Translate_ranks(list(range(comm.Get_size())), job)]
        finally:
            mine.Free()
            job.Free()

    def answer(self) -> None:
        """Answer every probe that has reached this rank (it is waiting in MPI)."""
        for source, probe in self._receive(PROBE_TAG):
            self._send(probe, source, ANSWER_TAG)

    def absent(self, members, answer_s: float) -> list[int]:
        """The job's ranks that do not answer a probe within ``answer_s``: those among
        ``members`` (the ranks of the operation that timed out) if any, else any rank."""
        with self._lock:
            self._probe += 1
            probe = np.array([self._probe], np.int64)
        others = [r for r in range(self.size) if r != self.rank]
        for r in others:
            self._send(probe, r, PROBE_TAG)
        answered: set = set()
        deadline = time.monotonic() + answer_s
        while len(answered) < len(others) and time.monotonic() < deadline:
            self.answer()  # another rank may be asking too
            answered.update(src for src, got in self._receive(ANSWER_TAG) if got[0] == probe[0])
            time.sleep(1e-3)
        missing = [r for r in others if r not in answered]
        return [r for r in members if r in missing] or missing

    def _receive(self, tag: int):
        """(source, 1-element int64 array) of every message with ``tag`` that has arrived."""
        status = self.MPI.Status()
        while True:
            message = self.channel.Improbe(self.MPI.ANY_SOURCE, tag, status)
            if message is None:
                return
            got = np.empty(1, np.int64)
            message.Recv(got)
            yield status.Get_source(), got

    def _send(self, buffer, dst: int, tag: int) -> None:
        with self._lock:
            self._in_flight = [(req, buf) for req, buf in self._in_flight if not req.Test()]
            try:
                self._in_flight.append((self.channel.Isend(buffer, dest=dst, tag=tag), buffer))
            except self.MPI.Exception:  # that rank is gone: it will not answer either
                pass
