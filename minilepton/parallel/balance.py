"""Load balancing for data parallelism on nodes of unequal speed (the article's §9.7).

A synchronous step ends when the slowest rank finishes: with shares n_r and speeds s_r (samples
per second), the step takes max_r n_r / s_r. Equal shares make every rank wait for the slowest
(the straggler effect); shares n_r ∝ s_r make every rank finish together, at B / Σ s_r.

- static: shares ∝ the declared speed factors (``--node-speeds 1,1,1,0.5``).
- dynamic: shares moved step by step toward equal measured compute times (forward and
  backward, not the wait inside the all-reduce), smoothed over steps and agreed by an
  all-reduce, so every rank switches to the same split at the same step.

Only the split changes; the loss stays Σ(local per-sample losses) / B_global, so the summed
gradient is still exactly the global-batch mean.
"""

from __future__ import annotations

import numpy as np

BALANCE_MODES = ("none", "static", "dynamic")


def static_weights(speeds) -> np.ndarray:
    """Shares proportional to declared speeds, normalised to sum to 1."""
    s = np.asarray(speeds, dtype=np.float64)
    return s / s.sum()


class StaticBalancer:
    """Shares ∝ the declared speed factors, fixed for the whole run."""

    def __init__(self, speeds):
        self.weights = static_weights(speeds)

    def update(self, comm, samples: int, compute_s: float):
        return None  # never moves


def make_balancer(mode: str, world_size: int, speeds=None):
    """The balancer of ``--balance MODE`` (None for ``none``); ``speeds`` default to equal."""
    if mode not in BALANCE_MODES:
        raise ValueError(f"--balance must be one of {', '.join(BALANCE_MODES)}, not {mode!r}")
    if mode == "static":
        return StaticBalancer(np.ones(world_size) if speeds is None else speeds)
    return DynamicBalancer(world_size) if mode == "dynamic" else None


def step_time_s(shares, speeds, seconds_per_sample: float, comm_s: float = 0.0) -> float:
    """Model of one synchronous step: the slowest rank's compute plus the all-reduce."""
    shares = np.asarray(shares, dtype=np.float64)
    speeds = np.asarray(speeds, dtype=np.float64)
    return float(np.max(shares * seconds_per_sample / speeds) + comm_s)


class DynamicBalancer:
    """Shares that equalise the measured compute times, agreed by all ranks.

    ``update(comm, samples, compute_s)`` is a collective: every rank contributes its step's
    compute time t_r (smoothed: t̄_r ← α t̄_r + (1 − α) t_r) and every rank computes the same
    new weights, a damped multiplicative step toward equal times:

        w_r ← w_r · (mean_r t̄_r / t̄_r)^gain,   then normalised, and floored at ``min_share``

    Its fixed point is t_r equal on every rank (nobody waits). Ranking by time rather than by
    throughput n_r / t_r matters: a fixed per-step overhead makes a rank with few samples look
    slow per sample, and a throughput rule then starves it further (it runs away to the edge).
    ``every``: update only each ``every``-th call (the rest return ``None``).
    """

    def __init__(self, world_size: int, smoothing: float = 0.5, gain: float = 0.5,
                 min_share: float = 0.02, every: int = 1, weights=None):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), not {smoothing}")
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], not {gain}")
        self.world_size = int(world_size)
        self.smoothing, self.gain = float(smoothing), float(gain)
        self.min_share = float(min_share) / self.world_size
        self.every = max(1, int(every))
        self.weights = (np.full(self.world_size, 1.0 / self.world_size) if weights is None
                        else static_weights(weights))
        self.seconds = None  # smoothed compute seconds per rank, agreed
        self._calls = 0

    def update(self, comm, samples: int, compute_s: float):
        self._calls += 1
        if self._calls % self.every:
            return None
        mine = np.zeros(2 * self.world_size, dtype=np.float64)
        mine[comm.rank] = compute_s
        mine[self.world_size + comm.rank] = samples
        measured = comm.allreduce(mine, op="sum")  # only rank r's slots are non-zero on rank r
        times, counts = measured[:self.world_size], measured[self.world_size:]
        if np.any(counts == 0) or np.any(times <= 0):
            return None  # a rank without samples says nothing about its speed
        if self.seconds is None:
            self.seconds = times.copy()
        else:
            self.seconds = self.smoothing * self.seconds + (1 - self.smoothing) * times
        w = self.weights * (self.seconds.mean() / self.seconds) ** self.gain
        w = np.maximum(w / w.sum(), self.min_share)
        self.weights = w / w.sum()
        return self.weights
