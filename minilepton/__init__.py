"""minilepton: distributed deep-learning training you can read end to end.

``import minilepton as ml``; ``ml.Tensor``, ``ml.no_grad``; the subpackages ``ml.nn``,
``ml.optim``, ``ml.data``, ``ml.comm``, ``ml.cluster``, ``ml.parallel`` load on first use.
"""

from __future__ import annotations

import importlib

from . import backend
from .autograd import Tensor, concatenate, gradcheck, no_grad, split, stack

__version__ = "0.1.0"
_SUBPACKAGES = ("nn", "optim", "data", "comm", "cluster", "parallel", "train", "trace")

__all__ = ["Tensor", "no_grad", "gradcheck", "concatenate", "split", "stack", "backend",
           *_SUBPACKAGES]


def __getattr__(name):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'minilepton' has no attribute {name!r}")
