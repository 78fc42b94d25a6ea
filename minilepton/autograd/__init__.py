"""Reverse-mode automatic differentiation over backend arrays, written from scratch."""

from . import ops, shape_ops  # noqa: F401 - attach the operators to Tensor
from .gradcheck import GradcheckError, gradcheck, numerical_grad
from .grad_mode import is_grad_enabled, no_grad
from .losses import (binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy,
                     log_softmax, mse)
from .shape_ops import concatenate, split, stack
from .tensor import Tensor, as_tensor

__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "gradcheck", "numerical_grad",
           "GradcheckError", "concatenate", "split", "stack", "log_softmax", "cross_entropy",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "mse"]
