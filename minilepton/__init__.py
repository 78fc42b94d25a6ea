"""minilepton: distributed deep-learning training you can read end to end.

``import minilepton as ml``; ``ml.Tensor``, ``ml.no_grad``; the subpackages ``ml.nn``,
``ml.optim``, ``ml.data``, ``ml.comm``, ``ml.cluster``, ``ml.parallel``, ``ml.engine`` load on
first use; ``ml.train(ml.TrainConfig(...))`` runs any layout, as ``minilepton train`` does.
"""

from __future__ import annotations

import importlib

from . import backend
from .autograd import Tensor, concatenate, gradcheck, no_grad, split, stack

__version__ = "0.1.0"
_SUBPACKAGES = ("nn", "optim", "data", "comm", "cluster", "parallel", "engine")
_ENGINE = ("train", "TrainConfig")  # ml.train(ml.TrainConfig(...)) -> metrics

__all__ = ["Tensor", "no_grad", "gradcheck", "concatenate", "split", "stack", "backend",
           *_SUBPACKAGES, *_ENGINE]


def __getattr__(name):
    """Subpackages and the engine's entry load on first use (``import minilepton`` stays light)."""
    if name in _SUBPACKAGES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _ENGINE:
        value = getattr(importlib.import_module(".engine", __name__), name)
    else:
        raise AttributeError(f"module 'minilepton' has no attribute {name!r}")
    globals()[name] = value
    return value
