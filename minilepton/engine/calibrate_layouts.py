"""What a layout costs inside a real training step, beyond its arithmetic and its collectives.

The collectives' lines of ``calibrate_comm`` come from tight loops in which every rank calls at
once. In a training step the ranks arrive at a collective at different moments (one worker's
Python ran longer, the scheduler moved it), a gradient bucket is zeroed and gathered, a
pipeline stage walks its plan and matches messages at every step. Those costs are measured the
only way they exist: by training. For each kind of parallelism and P in (2, 4), a tiny MLP
(width 8, so the arithmetic is nothing) trains through ``engine.run.train`` on P workers, twice;
the median seconds per step of its epochs after the first, in the faster run, is the
measurement, and the constant x
that makes the cost model predict it (found by bisection, the rest of the model unchanged) is
kept in the profile:

    dp  x per step                     (the data group's rendezvous and bucket bookkeeping)
    tp  x per tensor-parallel block    (the mapping ops and their all-reduces' rendezvous)
    pp  x per micro-batch and stage    (walking the plan, matching sends and receives)

Then runs of real size (MLPs of width 256, 256 features, 64 samples per worker or per
pipeline) give the factor by which P concurrent workers compute more slowly than one alone:
shared caches and memory bandwidth, measured with data parallelism; and, when P exceeds the
cores, the same for a pipeline, whose stages hand work to each other at every micro-batch and
so wait out time slices that data and tensor parallelism do not:

    dp_concurrent   x × every worker's compute and optimizer seconds
    pp_concurrent   the same, for pipelines of more workers than cores

``sim.compute.in_context`` reads them back.
"""

from __future__ import annotations

import copy
import statistics

import numpy as np

from .. import sim
from ..backend import cpu_count
from .config import TrainConfig
from .run import train

TINY = {  # kind -> (hidden sizes, batch per worker-group, micro-batches)
    "dp": ((8,), 8, 1),
    "tp": ((8, 8), 8, 1),
    "pp": ((8, 8, 8), 16, 4),
}
SAMPLES, FEATURES, EPOCHS = 960, 8, 4
MEDIUM = {  # kind -> (hidden sizes, batch per worker-group, micro-batches)
    "dp_concurrent": ((256, 256), 64, 1),
    "pp_concurrent": ((256, 256, 256), 64, 4),
}
MEDIUM_FEATURES, MEDIUM_SAMPLES = 256, 3840


def _config(kind: str, P: int) -> TrainConfig:
    hidden, batch, micro = TINY.get(kind) or MEDIUM[kind]
    kind = kind.replace("_concurrent", "")
    if kind == "dp":
        return TrainConfig(hidden=hidden, batch_size=batch * P, dp=P, epochs=EPOCHS,
                           verbose=False)
    return TrainConfig(hidden=hidden, batch_size=batch, epochs=EPOCHS, verbose=False,
                       micro_batches=micro, **{kind: P})


def _shape(kind: str) -> tuple[int, int]:
    return (MEDIUM_SAMPLES, MEDIUM_FEATURES) if kind in MEDIUM else (SAMPLES, FEATURES)


def _measured(cfg: TrainConfig, kind: str, runs: int = 2) -> float:
    """Seconds per step: the median over the epochs after the first, the smaller of ``runs``
    runs (another process's burst slows a run down, never speeds it up)."""
    samples, features = _shape(kind)
    rng = np.random.default_rng(0)
    x = rng.random((samples, features), dtype=np.float32)
    y = (np.arange(samples) % 10).astype(np.int64)
    steps = samples / cfg.batch_size
    best = float("inf")
    for _ in range(runs):
        metrics = train(cfg, arrays=(x, y, x[:64], y[:64]), timeout_s=60)
        best = min(best, statistics.median(e["seconds"] / steps for e in metrics["epochs"][1:]))
    return best


def _predicted(profile: dict, cfg: TrainConfig, kind: str, P: int, x: float) -> float:
    trial = copy.deepcopy(profile)
    trial["engine"].setdefault("layouts", {}).setdefault(kind, {})[str(P)] = x
    hw = sim.hardware(trial, backend=cfg.backend)
    model = sim.mlp([_shape(kind)[1], *cfg.hidden, 10])
    return sim.predict(model, sim.Layout.from_config(cfg), hw)["step_seconds"]


def _solve(profile, cfg, kind, P, target: float) -> float:
    lo, hi = (1.0, 4.0) if kind in MEDIUM else (0.0, 0.05)
    if _predicted(profile, cfg, kind, P, lo) >= target:
        return lo
    for _ in range(40):
        mid = (lo + hi) / 2
        if _predicted(profile, cfg, kind, P, mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def measure_layouts(profile: dict, log=print, worlds=(2, 4)) -> dict:
    """{"dp"|"tp"|"pp": {"P": seconds}} for ``profile`` (which holds everything else)."""
    out: dict = {}
    for kind in (*TINY, *MEDIUM):
        for P in worlds:
            if kind == "pp_concurrent" and P <= cpu_count():
                continue
            cfg = _config(kind, P)
            measured = _measured(cfg, kind)
            out.setdefault(kind, {})[str(P)] = _solve(profile, cfg, kind, P, measured)
            profile["engine"].setdefault("layouts", {}).setdefault(kind, {})[str(P)] = \
                out[kind][str(P)]
        if kind not in out:
            continue
        log(f"  {kind}: " + ", ".join(f"P={p} " + (f"× {v:.2f}" if kind in MEDIUM else
                                                    f"{1e6 * v:.0f} µs")
                                      for p, v in out[kind].items()))
    return out
