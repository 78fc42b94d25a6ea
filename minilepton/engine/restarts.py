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
import sys

from ..cluster import WorkerError, launch


def supervise(cfg, arrays, options: dict, run_dir: str, worker) -> dict:
    """Run ``worker`` on ``cfg.world_size`` ranks, restarting up to ``cfg.max_restarts`` times;
    rank 0's metrics (with ``restarts`` and ``world_size`` of the attempt that finished)."""
    if cfg.max_restarts and not cfg.checkpoint_dir:
        cfg = dataclasses.replace(cfg, checkpoint_dir=os.path.join(run_dir, "checkpoints"))
    failures: dict = {}
    attempt_cfg = cfg
    for attempt in range(cfg.max_restarts + 1):
        try:
            metrics = launch(worker, attempt_cfg.world_size, args=(attempt_cfg, arrays, None,
                                                                   run_dir),
                             backend=cfg.backend, **_for_world(options, attempt_cfg))[0]
            metrics["restarts"] = attempt
            return metrics
        except WorkerError as exc:
            if attempt == cfg.max_restarts:
                raise
            failures[exc.rank] = failures.get(exc.rank, 0) + 1
            attempt_cfg = dataclasses.replace(attempt_cfg, resume=True)
            shrunk = _fewer_workers(attempt_cfg, cfg.min_workers, failures[exc.rank])
            if shrunk is not attempt_cfg:
                attempt_cfg, failures = shrunk, {}
            cause = str(exc).splitlines()[0]
            print(f"minilepton: {cause}; restart {attempt + 1}/{cfg.max_restarts} from the "
                  f"newest checkpoint on {attempt_cfg.world_size} worker(s)",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")


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
    out = dict(options)
    if "node_speeds" in out:
        out["node_speeds"] = list(cfg.node_speeds) if cfg.node_speeds else None
        if out["node_speeds"] is None:
            del out["node_speeds"]
    return out
