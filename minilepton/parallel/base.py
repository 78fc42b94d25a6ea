"""``Strategy``: what the training loop asks of a strategy, the seam between the two.

The engine's loop owns epochs, batches, logging and checkpoints; a strategy owns the step: which
part of each global batch this rank computes, the forward, backward, synchronisation and update,
evaluation, and its state. ``strategy.ParallelStrategy`` implements all of it for any layout.
"""

from __future__ import annotations

import numpy as np

from .state import full_state, gather_full, load_full_state
from .stats import StepStats


class Strategy:
    """What the loop asks of a strategy. ``ParallelStrategy`` implements all of it; the state
    methods act on ``self.model`` / ``self.optimizer`` (this rank's pieces) and ``self.mesh``."""

    is_main = True            # this rank prints, writes metrics, saves files
    rank = 0

    def local_indices(self, global_indices: np.ndarray) -> np.ndarray:
        """The part of a global batch this rank computes."""
        raise NotImplementedError

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        """Forward, backward, synchronise, update; stats over this rank's samples."""
        raise NotImplementedError

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Loss and accuracy over (x, y) with no graph; every rank returns the same totals."""
        raise NotImplementedError

    def reduce_stats(self, stats: StepStats) -> StepStats:
        """Totals over all ranks."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to resume, as whole tensors by name (``state.full_state``): a
        collective, loadable on any layout."""
        return full_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_full_state(self, state)

    def full_parameters(self) -> dict:
        """The whole model's parameters as NumPy arrays by name (a collective)."""
        return gather_full(self, {n: p.numpy() for n, p in self.model.named_parameters()})

    def comm_report(self) -> dict:
        """``bytes_per_step`` sent and ``comm_seconds_fraction`` of the step time."""
        return {"bytes_per_step": 0.0, "comm_seconds_fraction": 0.0}
