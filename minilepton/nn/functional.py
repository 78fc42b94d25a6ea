"""Stateless functions on Tensors: activations and losses (the fused, stable autograd forms).

- ``cross_entropy(logits, labels, reduction="mean")``: softmax cross-entropy of *logits* (N, C)
  against integer class labels (N,).
- ``binary_cross_entropy(probs, targets)``: BCE of *probabilities* (a sigmoid's output, as in the
  article's logistic-regression example); p is clipped to [1e-12, 1 − 1e-12].
- ``binary_cross_entropy_with_logits(logits, targets)``: the same loss taken from *logits*
  (before the sigmoid); prefer it for training, it is exact for any logit.
- ``mse(pred, target)``: mean squared error over all elements.
- ``linear(x, weight, bias)``: x @ W + b as one graph node; ``log_softmax``, ``softmax``,
  ``relu``, ``sigmoid``, ``tanh``.
"""

from __future__ import annotations

from ..autograd.losses import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    log_softmax,
    mse,
)
from ..autograd.ops import linear, relu, sigmoid, tanh
from ..autograd.tensor import Tensor

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear",
    "log_softmax",
    "mse",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(log_softmax(x)): probabilities along ``axis`` (two graph nodes)."""
    return log_softmax(x, axis=axis).exp()
