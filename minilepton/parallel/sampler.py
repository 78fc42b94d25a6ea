"""Which samples of each global batch a data-parallel rank computes.

Every rank walks the same sequence of global batches (index arrays cut from one permutation
seeded by ``(seed, epoch)``), so nothing about the order depends on the world size. Rank r takes
the contiguous block ``batch[offsets[r]:offsets[r + 1]]``; the blocks are disjoint and cover the
batch, so P workers with global batch B consume exactly the samples one process with batch B
would, in the same steps. With weights w (load balancing), block sizes are n_r ≈ B · w_r / Σw,
rounded by largest remainder so that Σ n_r = B exactly; a rank may get an empty block (a tiny
last batch), and it still joins the gradient all-reduce with zeros, so nothing hangs.
"""

from __future__ import annotations

import numpy as np


def shard_sizes(batch_size: int, weights) -> np.ndarray:
    """Integer block sizes n_r ∝ weights with Σ n_r = batch_size (largest-remainder rounding).

    Ties in the remainders go to the lower rank, so every rank computes the same answer.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) == 0:
        raise ValueError("weights must be a non-empty 1-d sequence, one per rank")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, not {w.tolist()}")
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, not {batch_size}")
    exact = batch_size * w / w.sum()
    sizes = np.floor(exact).astype(np.int64)
    left = int(batch_size - sizes.sum())
    if left:
        order = np.argsort(-(exact - sizes), kind="stable")  # largest remainder first
        sizes[order[:left]] += 1
    return sizes


def shard_offsets(batch_size: int, weights) -> np.ndarray:
    """Block boundaries: rank r owns ``[offsets[r], offsets[r + 1])`` of a global batch."""
    return np.concatenate(([0], np.cumsum(shard_sizes(batch_size, weights))))


class DistributedSampler:
    """Rank ``rank``'s share of each global batch, optionally weighted by relative speed.

    ``weights`` defaults to equal shares; ``set_weights`` changes them between steps (dynamic
    load balancing) and must be called with the same values on every rank.
    """

    def __init__(self, rank: int, world_size: int, weights=None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.weights = np.ones(world_size)
        if weights is not None:
            self.set_weights(weights)

    def set_weights(self, weights) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.world_size,):
            raise ValueError(f"need {self.world_size} weights, one per rank, not {w.shape[0] if w.ndim else 1}")
        shard_sizes(1, w)  # validates
        self.weights = w / w.sum()

    def sizes(self, batch_size: int) -> np.ndarray:
        """Every rank's block size for a global batch of ``batch_size`` samples."""
        return shard_sizes(batch_size, self.weights)

    def bounds(self, batch_size: int) -> tuple[int, int]:
        """This rank's ``(start, stop)`` within a global batch."""
        offsets = shard_offsets(batch_size, self.weights)
        return int(offsets[self.rank]), int(offsets[self.rank + 1])

    def local_indices(self, global_indices) -> np.ndarray:
        """This rank's contiguous block of a global batch's indices (a view, no copy)."""
        start, stop = self.bounds(len(global_indices))
        return global_indices[start:stop]

    def epoch_batches(self, n_samples: int, batch_size: int, seed: int, epoch: int):
        """Yield ``(global_batch, local_batch)`` index arrays for one epoch.

        The permutation depends only on ``(seed, epoch)``; the last batch may be short.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        order = np.random.default_rng([int(seed), int(epoch)]).permutation(n_samples)
        for start in range(0, n_samples, batch_size):
            batch = order[start:start + batch_size]
            yield batch, self.local_indices(batch)

    def __repr__(self):
        return (f"DistributedSampler(rank={self.rank}, world_size={self.world_size}, "
                f"weights={np.round(self.weights, 4).tolist()})")
