"""Reverse-mode automatic differentiation over backend arrays, written from scratch."""

from . import ops, shape_ops  # noqa: F401 - attach the operators to Tensor
from .grad_mode import is_grad_enabled, no_grad
from .gradcheck import GradcheckError, gradcheck, numerical_grad
from .losses import (
                     binary_cross_entropy,
                     binary_cross_entropy_with_logits,
                     cross_entropy,
                     log_softmax,
                     mse,
)
from .shape_ops import concatenate, split, stack
from .tensor import Tensor, as_tensor

__all__ = [
                     "GradcheckError",
                     "Tensor",
                     "as_tensor",
                     "binary_cross_entropy",
                     "binary_cross_entropy_with_logits",
                     "concatenate",
                     "cross_entropy",
                     "gradcheck",
                     "is_grad_enabled",
                     "log_softmax",
                     "mse",
                     "no_grad",
                     "numerical_grad",
                     "split",
                     "stack",
]
