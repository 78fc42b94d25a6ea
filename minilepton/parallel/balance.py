"""Load balancing for data parallelism on nodes of unequal speed (the article's §9.7).

A synchronous step ends when the slowest rank finishes: with shares n_r and speeds s_r (samples
per second), the step takes max_r n_r / s_r. Equal shares make every rank wait for the slowest
(the straggler effect); shares n_r ∝ s_r make every rank finish together, at B / Σ s_r.

- static: shares ∝ the declared speed factors (``--node-speeds 1,1,1,0.5``).
- dynamic: shares ∝ the measured throughput n_r / t_r of each rank's compute (forward and
  backward, not the wait inside the all-reduce), smoothed over steps and agreed by an
  all-reduce, so every rank switches to the same split at the same step.

Only the split changes; the loss stays Σ(local per-sample losses) / B_global, so the summed
gradient is still exactly the global-batch mean.
"""

from __future__ import annotations

import numpy as np

BALANCE_MODES = ("none", "static", "dynamic")


def parse_node_speeds(spec, world_size: int) -> np.ndarray:
    """Speed factors, one per rank, from ``"1,1,0.5"`` or a sequence (1.0 = full speed)."""
    if spec is None or spec == "":
        return np.ones(world_size)
    if isinstance(spec, str):
        try:
            values = [float(v) for v in spec.split(",")]
        except ValueError:
            raise ValueError(f"--node-speeds must be comma-separated numbers, not {spec!r}") from None
    else:
        values = [float(v) for v in spec]
    if len(values) != world_size:
        raise ValueError(f"--node-speeds gives {len(values)} speeds for {world_size} workers")
    speeds = np.asarray(values)
    if not np.all(np.isfinite(speeds)) or np.any(speeds <= 0):
        raise ValueError(f"--node-speeds must be positive, not {spec!r}")
    return speeds


def static_weights(speeds) -> np.ndarray:
    """Shares proportional to declared speeds, normalised to sum to 1."""
    s = np.asarray(speeds, dtype=np.float64)
    return s / s.sum()


def step_time_s(shares, speeds, seconds_per_sample: float, comm_s: float = 0.0) -> float:
    """Model of one synchronous step: the slowest rank's compute plus the all-reduce."""
    shares = np.asarray(shares, dtype=np.float64)
    speeds = np.asarray(speeds, dtype=np.float64)
    return float(np.max(shares * seconds_per_sample / speeds) + comm_s)


class DynamicBalancer:
    """Shares from measured throughput, an exponential moving average agreed by all ranks.

    ``update(comm, samples, compute_s)`` is a collective: each rank contributes its own
    throughput, every rank gets the same new weights. ``smoothing`` in [0, 1) is the weight of
    the old estimate; ``every`` updates only each ``every``-th call (the rest return ``None``).
    """

    def __init__(self, world_size: int, smoothing: float = 0.5, every: int = 1):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), not {smoothing}")
        self.world_size = int(world_size)
        self.smoothing = float(smoothing)
        self.every = max(1, int(every))
        self.throughput = None  # samples per second per rank, agreed
        self._calls = 0

    def update(self, comm, samples: int, compute_s: float):
        self._calls += 1
        if self._calls % self.every:
            return None
        mine = np.zeros(self.world_size, dtype=np.float64)
        if samples > 0 and compute_s > 0:
            mine[comm.rank] = samples / compute_s
        measured = comm.allreduce(mine, op="sum")  # only slot r is non-zero on rank r
        if self.throughput is None:
            self.throughput = np.where(measured > 0, measured, 0.0)
        else:
            fresh = measured > 0  # a rank with no samples this step keeps its old estimate
            self.throughput[fresh] = (self.smoothing * self.throughput[fresh]
                                      + (1 - self.smoothing) * measured[fresh])
        if np.any(self.throughput <= 0):
            known = self.throughput[self.throughput > 0]
            fill = known.mean() if known.size else 1.0
            self.throughput = np.where(self.throughput > 0, self.throughput, fill)
        return self.throughput / self.throughput.sum()
