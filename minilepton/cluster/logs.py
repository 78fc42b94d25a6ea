"""Worker log records reach the launcher's console, each prefixed ``[rank k]``.

Each worker replaces its root handlers with a ``QueueHandler`` writing to a queue that the
launcher drains in a thread, handing every record to the launcher's own logging setup (so its
handlers, format and level decide what is shown), and optionally with a file per rank under
``log_dir``. The same path serves fork and spawn, and it is set up and torn down per job, so a
process may launch many jobs (tests, notebooks) without its logging being rewired for good.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading

from ..comm.base import verbose_default

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RankPrefix(logging.Filter):
    """Prefix each record's message with ``[rank k]`` (once, whichever handler sees it first)."""

    def __init__(self, rank: int):
        super().__init__()
        self.prefix = f"[rank {rank}] "

    def filter(self, record):
        if not getattr(record, "_rank_prefixed", False):
            record.msg = self.prefix + record.getMessage()
            record.args = None
            record._rank_prefixed = True
        return True


class LogRelay:
    """Launcher side: a queue the workers log into and a thread that re-emits the records."""

    def __init__(self, ctx):
        self.queue = ctx.Queue()
        self._thread = threading.Thread(target=self._run, name="minilepton-log-relay",
                                        daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                record = self.queue.get()
            except (EOFError, OSError, ValueError):
                return
            if record is None:
                return
            try:
                logging.getLogger(record.name).handle(record)
            except Exception:  # noqa: BLE001, S110 - a broken handler must not stop the relay
                pass

    def stop(self, timeout_s: float = 2.0) -> None:
        try:
            self.queue.put(None)
        except (OSError, ValueError):
            pass
        self._thread.join(timeout_s)
        self.queue.close()
        if self._thread.is_alive():  # stuck on a broken queue: do not wait for its feeder
            self.queue.cancel_join_thread()
        else:
            self.queue.join_thread()  # its pipe is closed when this returns


def root_level() -> int:
    """The launcher's effective root level (INFO when the verbose switch is on)."""
    level = logging.getLogger().getEffectiveLevel()
    if verbose_default():
        if not logging.getLogger().handlers:
            logging.basicConfig(format="%(message)s")
        level = min(level, logging.INFO)
    return level


def setup_worker(rank: int, queue, level: int, log_dir: str | None) -> None:
    """Worker side: route every record to the launcher's queue (and to a per-rank file)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    prefix = RankPrefix(rank)
    to_launcher = logging.handlers.QueueHandler(queue)
    to_launcher.addFilter(prefix)
    root.addHandler(to_launcher)
    if log_dir:
        to_file = rank_file_handler(log_dir, rank)
        to_file.setFormatter(logging.Formatter(FILE_FORMAT))
        to_file.addFilter(prefix)
        root.addHandler(to_file)
    root.setLevel(level)


def rank_file_handler(log_dir: str, rank: int) -> logging.Handler:
    """A handler appending to ``log_dir/rank{rank}.log``, opened with ``O_NOFOLLOW``: a symlink
    another user planted there is refused instead of followed (new files are 0600)."""
    os.makedirs(log_dir, exist_ok=True)
    fd = os.open(os.path.join(log_dir, f"rank{rank}.log"),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    return logging.StreamHandler(os.fdopen(fd, "a", buffering=1))
