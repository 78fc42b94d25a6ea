"""What a step reports, and how a model is scored: the loss a strategy owns, summed per sample.

Every strategy differentiates Σ_{i∈local} ℓ_i / B_global (``ℓ`` = ``loss_fn``, a *summed*
loss), so that adding the ranks' gradients gives the gradient of the global-batch mean, and
every rank reports ``StepStats``: sums over the samples it computed, divided only at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..autograd import Tensor, no_grad
from ..autograd.losses import cross_entropy

# The training loss of every strategy unless told otherwise: Σ_i −log softmax(z_i)[y_i].
sum_cross_entropy = partial(cross_entropy, reduction="sum")


@dataclass
class StepStats:
    """Sums over the samples one rank computed (divide by ``count`` for means)."""

    loss_sum: float
    correct: int
    count: int

    def __add__(self, other: StepStats) -> StepStats:
        return StepStats(self.loss_sum + other.loss_sum, self.correct + other.correct,
                         self.count + other.count)


def step_stats(loss_sum: float, logits, y) -> StepStats:
    """The stats of one batch: its summed loss, its correct arg-max predictions, its size."""
    correct = int((logits.argmax(axis=1) == y).sum())
    return StepStats(float(loss_sum), correct, len(y))


def evaluate_model(model, x, y, batch_size: int = 1024, loss_fn=sum_cross_entropy) -> StepStats:
    """Summed ``loss_fn`` and correct predictions of ``model`` over (x, y), in batches."""
    total = StepStats(0.0, 0, 0)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    with no_grad():
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
            logits = model(Tensor(xb))
            total = total + step_stats(loss_fn(logits, yb).item(), logits.data, yb)
    if was_training and hasattr(model, "train"):
        model.train()
    return total
