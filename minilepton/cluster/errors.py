"""``WorkerError``: how a launcher (shm or MPI) says that a worker of its job failed."""

from __future__ import annotations


class WorkerError(RuntimeError):
    """A worker failed. ``rank`` (None when no single rank is to blame) and the message, which
    carries the exception (or signal) and the worker's traceback."""

    def __init__(self, rank, message: str):
        self.rank = rank
        self.message = message
        who = "a worker" if rank is None else f"worker rank {rank}"
        super().__init__(f"{who} failed: {message}")
