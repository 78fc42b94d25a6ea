"""Optimizers: ``SGD`` (momentum, weight decay) and ``Adam``, in PyTorch's conventions."""

from .adam import Adam
from .optimizer import Optimizer, StateDictError
from .sgd import SGD

__all__ = ["SGD", "Adam", "Optimizer", "StateDictError"]
