"""Elastic restarts: a failed job starts again from its newest checkpoint (``--max-restarts``).

    attempt 0:  launch P workers ─── a worker raises, dies or stalls ──> the launcher stops the
                                     job, names the rank and the cause (``WorkerError``)
    attempt k:  launch again with ``resume`` ── continues at the newest checkpoint's step

The checkpoints hold whole tensors (``parallel.state``), so the restarted job need not have the
old layout: with ``--min-workers M`` a data-parallel job whose same rank failed twice carries on
with one worker fewer (down to M), on the same global batch (the sums merely in another order).
Without ``--checkpoint-dir`` the checkpoints go to the run's private folder and are removed at
the end. With the same world size a restarted run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time

import numpy as np

from ..cluster import WorkerError, launch
from ..cluster.faults import fired_at, parse_fault
from ..cluster.procfs import is_descendant
from ..comm.base import timeout_default
from .heartbeats import heartbeats


def supervise(cfg, arrays, options: dict, run_dir: str, worker) -> dict:
    """Run ``worker`` on ``cfg.world_size`` ranks, restarting up to ``cfg.max_restarts`` times;
    rank 0's metrics (with ``restarts`` and ``world_size`` of the attempt that finished)."""
    if cfg.max_restarts and not cfg.checkpoint_dir:
        cfg = dataclasses.replace(cfg, checkpoint_dir=os.path.join(run_dir, "checkpoints"))
    failures: dict = {}
    attempt_cfg = cfg
    for attempt in range(cfg.max_restarts + 1):
        try:
            with Watchdog(run_dir, attempt_cfg.world_size, 0.75 * timeout_default()) as watchdog:
                metrics = launch(worker, attempt_cfg.world_size,
                                 args=(attempt_cfg, arrays, None, run_dir),
                                 backend=cfg.backend, **_for_world(options, attempt_cfg))[0]
            metrics["restarts"] = attempt
            if attempt:
                _add_recovery(metrics, cfg, run_dir)
            return metrics
        except WorkerError as exc:
            failure = exc if watchdog.stopped is None else WorkerError(  # the stalled rank
                watchdog.stopped, f"stalled: no training step for {watchdog.limit_s:g} s, "
                "stopped by the supervisor")
            if attempt == cfg.max_restarts:
                raise failure from None
            failures[failure.rank] = failures.get(failure.rank, 0) + 1
            attempt_cfg = dataclasses.replace(attempt_cfg, resume=True)
            shrunk = _fewer_workers(attempt_cfg, cfg.min_workers, failures[failure.rank])
            if shrunk is not attempt_cfg:
                attempt_cfg, failures = shrunk, {}
            cause = str(failure).splitlines()[0]
            print(f"minilepton: {cause}; restart {attempt + 1}/{cfg.max_restarts} from the "
                  f"newest checkpoint on {attempt_cfg.world_size} worker(s)",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


class Watchdog:
    """A thread that stops (SIGKILL) a worker that has stalled: its heartbeat (``heartbeats``)
    has not moved for ``limit_s`` while it was not waiting inside a collective. A stall then
    fails the job even where no peer waits on the stalled rank (one worker), and before its
    peers' collectives time out, so the stalled rank is the one named. It signals only pids
    that its heartbeat table names and that descend from this process."""

    def __init__(self, run_dir: str, world_size: int, limit_s: float, poll_s: float = 0.2):
        self.limit_s, self.poll_s = limit_s, poll_s
        self.table = heartbeats(run_dir, world_size, mode="w+")
        self.stopped = None  # the rank it stopped
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        return False

    def _watch(self) -> None:
        while not self._done.wait(self.poll_s):
            now = time.time()
            for rank, (last_s, waiting, pid) in enumerate(np.array(self.table)):
                if last_s and not waiting and now - last_s > self.limit_s \
                        and is_descendant(int(pid)):
                    self.stopped = rank
                    os.kill(int(pid), signal.SIGKILL)
                    return


def _add_recovery(metrics: dict, cfg, run_dir: str) -> None:
    """``recovery_seconds`` (from the last injected fault firing to the restarted job's first
    step) and ``lost_steps`` (steps between the checkpoint resumed and that fault)."""
    fired = {i: t for i, t in fired_at(run_dir).items()
             if parse_fault(cfg.fault[i]).kind != "slow"}  # a slow node fails nothing
    resumed = metrics.get("resumed")
    if not fired or not resumed or "first_step_unix" not in resumed:
        return
    last = max(fired, key=fired.get)
    metrics["recovery_seconds"] = resumed["first_step_unix"] - fired[last]
    metrics["lost_steps"] = parse_fault(cfg.fault[last]).step - resumed["global_step"]


def _fewer_workers(cfg, min_workers, failures_of_rank: int):
    """One data-parallel worker fewer when a rank failed twice and ``--min-workers`` allows."""
    if (min_workers is None or failures_of_rank < 2 or cfg.tp * cfg.pp != 1
            or cfg.world_size <= min_workers):
        return cfg
    p = cfg.world_size - 1
    speeds = cfg.node_speeds[:p] if cfg.node_speeds else None
    return dataclasses.replace(cfg, workers=p, dp=p, node_speeds=speeds)


def _for_world(options: dict, cfg) -> dict:
    """The launcher's options for this attempt's world size (node speeds follow the workers)."""
    out = {k: v for k, v in options.items() if k != "node_speeds"}
    if cfg.node_speeds:
        out["node_speeds"] = list(cfg.node_speeds)
    return out
