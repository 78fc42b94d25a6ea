"""Model builders: the article's MLP and its logistic-regression example."""

from __future__ import annotations

import itertools

from .layers import Linear, ReLU, Sequential, Sigmoid, Tanh, as_generator

ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh}


def mlp(sizes, activation="relu", seed=0, dtype=None) -> Sequential:
    """A multilayer perceptron: ``mlp([784, 128, 10])`` is Linear(784, 128), ReLU,
    Linear(128, 10) (logits; no activation after the last layer).

    ``activation``: ``"relu"``, ``"sigmoid"``, ``"tanh"`` or a Module class. ``seed``: an
    integer or a ``numpy.random.Generator``; the layers draw their weights one after another
    from it, so the same seed gives the same model.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"mlp needs at least an input and an output size, not {sizes}")
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of "
                             f"{', '.join(ACTIVATIONS)}")
        activation = ACTIVATIONS[activation]
    rng = as_generator(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(Linear(n_in, n_out, rng=rng, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(activation())
    return Sequential(*layers)


def logistic_regression(n_features: int, seed=0, dtype=None) -> Sequential:
    """ŷ = σ(x @ w + b): Linear(n_features, 1) then Sigmoid, giving probabilities of shape
    (N, 1); train it with ``functional.binary_cross_entropy`` (the article's §4 example)."""
    return Sequential(Linear(n_features, 1, rng=as_generator(seed), dtype=dtype), Sigmoid())


__all__ = ["ACTIVATIONS", "logistic_regression", "mlp"]
