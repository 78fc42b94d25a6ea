"""``WorkerError``: how a launcher (shm or MPI) says that a worker of its job failed, and
``blame``: which rank a job's error reports point at."""

from __future__ import annotations

from ..comm.base import stalled_ranks


class WorkerError(RuntimeError):
    """A worker failed. ``rank`` (None when no single rank is to blame) and the message, which
    carries the exception (or signal) and the worker's traceback."""

    def __init__(self, rank, message: str):
        self.rank = rank
        self.message = message
        who = "a worker" if rank is None else f"worker rank {rank}"
        super().__init__(f"{who} failed: {message}")


def blame(first: int, reports: dict, heard=()) -> WorkerError:
    """The failure a job's error reports point at. ``reports``: rank -> (summary, detail) of
    every rank that reported an error (``summary`` the exception's line, ``detail`` the text to
    show); ``first``: the rank whose report came first; ``heard``: ranks known to have finished
    or ended otherwise (they did not stall).

    A stall is blamed on the rank that stalled, not on the ones that noticed: when the first
    report is a ``CommError`` naming the ranks that did not arrive (``comm.base.stalled_ranks``),
    every other report names them too, and exactly one of them has not been heard of, the
    header names that rank (``stalled (rank 0 reports CommError: ...)``). A report that is no
    stall names its own rank; in any other case the first report stands.
    """
    summary, detail = reports[first]
    suspects = stalled_ranks(summary)
    if not suspects:
        return WorkerError(first, detail)
    for rank, (text, other_detail) in sorted(reports.items()):
        named = stalled_ranks(text)
        if named is None:  # a real error elsewhere: that rank is the cause
            return WorkerError(rank, other_detail)
        suspects = [s for s in suspects if s in named]
    suspects = [s for s in suspects if s not in reports and s not in heard]
    if len(suspects) != 1:
        return WorkerError(first, detail)
    return WorkerError(suspects[0], f"stalled (rank {first} reports {detail})")
