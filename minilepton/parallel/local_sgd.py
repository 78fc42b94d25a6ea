"""Local SGD: each rank steps on its own gradients; every k steps the parameters are averaged.

Instead of one gradient all-reduce per step, rank r updates its replica with its local mean
gradient g_r = Σ_{i∈S_r} ∇ℓ_i / n_r, and every ``every`` steps (and before an evaluation)

    θ ← Σ_r (m_r / M) · θ_r        m_r = samples rank r computed since the last average, M = Σ m_r

so a rank that computed more samples weighs more. For plain SGD and ``every=1`` this is exactly
data parallelism (the tests check it); for k > 1 it trades accuracy for k times fewer messages.
The averages run through ``DataParallel``'s bucket buffers (one all-reduce per bucket).
"""

from __future__ import annotations

import time

from .. import backend


class LocalSGD:
    """Stands in for a ``DataParallel``'s gradient sync: rescale before the update, average
    parameters every ``every`` updates (``after_update``) and on ``finish``."""

    def __init__(self, dp, every: int):
        if every < 1:
            raise ValueError(f"--sync-every must be >= 1, not {every}")
        self.dp, self.every = dp, int(every)
        self.updates = 0
        self._since = [0, 0]  # [my samples, global samples] since the last average

    def before_update(self, n_local: int, global_batch: int) -> None:
        """Σ_local ∇ℓ / B → the local mean gradient Σ_local ∇ℓ / n (nothing is sent)."""
        if n_local:
            for b in self.dp.buckets:
                b.buffer *= global_batch / n_local

    def after_update(self, n_local: int, global_batch: int) -> None:
        self._since[0] += n_local
        self._since[1] += global_batch
        self.updates += 1
        if self.updates % self.every == 0:
            self.finish()

    def finish(self) -> None:
        """Average the parameters now (a no-op when nothing was computed since the last one)."""
        mine, total = self._since
        if total:
            average_parameters(self.dp, mine / total)
        self._since = [0, 0]


def average_parameters(dp, weight: float) -> None:
    """θ ← Σ_r weight_r · θ_r over ``dp.comm``, through ``dp``'s bucket buffers (which it
    overwrites: call it after the optimizer step)."""
    t0, bytes0 = time.perf_counter(), dp.comm.stats.bytes_sent
    for b in dp.buckets:
        xp = backend.xp_of(b.buffer)
        for p, view in zip(b.params, b.views):
            xp.multiply(p.data, weight, out=view)
        dp.comm.allreduce(b.buffer, op="sum")
        for p, view in zip(b.params, b.views):
            p.data[...] = view
    dp.sync_seconds += time.perf_counter() - t0
    dp.sync_bytes += dp.comm.stats.bytes_sent - bytes0
