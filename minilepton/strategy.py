"""How one training step is carried out: the seam between the training loop and parallelism.

The loop in ``minilepton.train`` owns epochs, batching, logging, metrics and checkpoints; a
*strategy* owns the step. Every rank runs the same loop over the same sequence of *global*
batches (index arrays drawn from one seeded permutation), and the strategy decides what part
of each batch this rank computes and how ranks talk:

- ``SingleProcess``: the whole batch, forward, backward, update.
- data parallel (``minilepton.parallel.data_parallel``): a shard of each batch, gradients
  averaged across ranks before the update.
- tensor / pipeline parallel (``minilepton.parallel``): the whole batch, a shard of the model.

The loss a strategy differentiates is Σ(local per-sample losses) / B_global, so that summing the
ranks' gradients gives exactly the gradient of the global-batch mean, even when shards differ in
size (uneven last batch, load balancing).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .autograd import Tensor, no_grad
from .autograd.losses import cross_entropy


@dataclass
class StepStats:
    """Sums over the samples one rank computed (divide by ``count`` for means)."""

    loss_sum: float
    correct: int
    count: int

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(self.loss_sum + other.loss_sum, self.correct + other.correct,
                         self.count + other.count)


class Strategy:
    """Protocol (and single-process defaults) for a training step. Subclasses override.

    The state defaults act on ``self.model`` and ``self.optimizer`` (this rank's whole model,
    or its shard): every strategy keeps the two under those names.
    """

    is_main = True  # this rank prints, writes metrics, saves files
    rank = 0
    # True when every rank holds the whole state (one process, data parallel): the main rank
    # writes one checkpoint. False (tensor / pipeline parallel): each rank writes its shard.
    replicated_state = True

    def local_indices(self, global_indices: np.ndarray) -> np.ndarray:
        """The part of a global batch this rank computes (default: all of it)."""
        return global_indices

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        """Forward, backward, synchronise, update; stats over this rank's samples."""
        raise NotImplementedError

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Loss and accuracy over (x, y) with no graph; every rank returns the same totals."""
        raise NotImplementedError

    def reduce_stats(self, stats: StepStats) -> StepStats:
        """Totals over all ranks (identity in one process)."""
        return stats

    def state_dict(self) -> dict:
        """Everything needed to resume: model parameters and optimizer state."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def full_parameters(self) -> dict:
        """The whole model's parameters as NumPy arrays by name (gathered on the main rank)."""
        return {name: p.numpy().copy() for name, p in self.model.named_parameters()}


class SingleProcess(Strategy):
    """One process computes everything: the reference every parallel strategy must equal."""

    def __init__(self, model, optimizer):
        self.model = model
        self.optimizer = optimizer

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        self.optimizer.zero_grad()
        logits = self.model(Tensor(x))
        loss = cross_entropy(logits, y, reduction="sum") * (1.0 / global_batch_size)
        loss.backward()
        self.optimizer.step()
        return _stats(loss.item() * global_batch_size, logits.data, y)

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        return evaluate_model(self.model, x, y, batch_size)


def _stats(loss_sum: float, logits, y) -> StepStats:
    correct = int((logits.argmax(axis=1) == y).sum())
    return StepStats(float(loss_sum), correct, len(y))


def evaluate_model(model, x, y, batch_size: int = 1024) -> StepStats:
    """Summed cross-entropy and correct predictions of ``model`` over (x, y), in batches."""
    total = StepStats(0.0, 0, 0)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = model(Tensor(xb))
            loss = cross_entropy(logits, yb, reduction="sum")
            total = total + _stats(loss.item(), logits.data, yb)
    if was_training and hasattr(model, "train"):
        model.train()
    return total
