"""Layers: ``Linear``, the activations, and ``Sequential``."""

from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..autograd import Tensor
from ..autograd.ops import linear
from .module import Module, Parameter


def as_generator(rng) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a Generator, an integer seed, or None (fresh entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


class Linear(Module):
    """y = x @ W + b, with ``weight`` W of shape (in_features, out_features) and ``bias`` b of
    shape (out_features,).

    The (in, out) layout is Keras's: a batch of row vectors times W, no transpose in forward.
    Tensor parallelism splits W by columns (output features) or rows (input features), so the
    layout and the names ``weight`` / ``bias`` are part of the contract; keep them.

    Initialisation: W ~ U(−a, a) with a = √(6 / (in + out)) (Glorot/Xavier uniform) and b = 0,
    as Keras's ``Dense`` does by default. The article's MLP is a Keras model, so minilepton's
    runs start from the same distribution as the article's; Glorot keeps the variance of the
    activations and of the gradients roughly equal from layer to layer. (PyTorch draws both W
    and b from U(−1/√in, 1/√in) instead.) The numbers are drawn in float64 from ``rng`` and then
    cast, so float32 and float64 models with the same seed hold the same values up to rounding.

    ``rng``: a ``numpy.random.Generator`` or an integer seed (reproducible models), or None
    (fresh entropy). ``dtype``: float32 or float64 (default ``ml.backend.default_dtype()``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng=None,
                 dtype=None):
        super().__init__()
        if int(in_features) < 1 or int(out_features) < 1:
            raise ValueError(f"Linear needs positive sizes, not ({in_features}, {out_features})")
        self.in_features, self.out_features = int(in_features), int(out_features)
        dtype = np.dtype(dtype or backend.default_dtype())
        limit = math.sqrt(6.0 / (self.in_features + self.out_features))
        w = as_generator(rng).uniform(-limit, limit, size=(self.in_features, self.out_features))
        self.weight = Parameter(w.astype(dtype))
        self.bias = Parameter(np.zeros(self.out_features, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)  # x @ W + b, one fused graph node

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class ReLU(Module):
    """max(x, 0), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return x.relu()


class Sigmoid(Module):
    """σ(x) = 1 / (1 + e⁻ˣ), elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


class Tanh(Module):
    """tanh x, elementwise."""

    def forward(self, x: Tensor) -> Tensor:
        return x.tanh()


class Sequential(Module):
    """Modules applied one after another: ``Sequential(Linear(...), ReLU(), ...)``.

    Children are named ``"0"``, ``"1"``, … (so parameters are ``"0.weight"``, ``"0.bias"``, …),
    or by the keys of a single dict passed instead. ``seq[i]`` is the i-th module, ``len(seq)``
    and ``iter(seq)`` work as for a list, and ``seq[a:b]`` is a Sequential of the same module
    objects that keeps their names, so a pipeline stage's ``state_dict()`` keys are the full
    model's keys.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], dict):
            items = list(modules[0].items())
        else:
            items = [(str(i), m) for i, m in enumerate(modules)]
        for name, module in items:
            if not isinstance(module, Module):
                raise TypeError(f"Sequential takes Modules, not {type(module).__name__} "
                                f"(at {name!r})")
            setattr(self, str(name), module)

    def forward(self, x):
        for module in self._modules.values():
            x = module(x)
        return x

    def append(self, module: Module) -> Sequential:
        """Add ``module`` at the end, named by its position."""
        name = str(len(self._modules))
        if name in self._modules:
            raise ValueError(f"Sequential already has a child named {name!r}")
        setattr(self, name, module)
        return self

    def __getitem__(self, index):
        items = list(self._modules.items())
        if isinstance(index, slice):
            return Sequential(dict(items[index]))
        return items[index][1]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(list(self._modules.values()))
