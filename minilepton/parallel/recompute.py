"""Activation recomputation: keep only each block's input, recompute the block in backward.

Backward needs what the forward computed (a ReLU its output, a Linear its input), so autograd
keeps every intermediate array alive until backward has used it: the activation memory grows
with depth and batch. Recomputation (Chen et al., "Training Deep Nets with Sublinear Memory
Cost", 2016; GPipe's re-materialisation) trades compute for it. For a block y = f(x):

    forward    y = f(x) under ``no_grad``: nothing inside f is kept, only x (and y)
    backward   x' = a fresh leaf with x's values; y' = f(x') recorded; ∂x = vjp of y' with g,
               and the parameters inside f receive their gradients as usual

The recomputed forward runs the same operations on the same bits, so the gradients, and the
parameters after the update, are bitwise those of the run without recomputation. The cost is
one more forward of every block. ``blocks_of`` cuts a ``Sequential`` at each layer that owns
parameters (a Linear and the activation after it); with pipeline parallelism a whole stage is
one block (GPipe keeps only each micro-batch's stage input).
"""

from __future__ import annotations

from ..autograd import Tensor, no_grad
from ..nn import Sequential
from .memory import graph_bytes


def checkpoint(fn, x: Tensor, meter=None) -> Tensor:
    """y = fn(x), keeping only x for backward; ``meter`` (an ``ActivationMeter``) counts the
    recomputed block's activations while its backward runs."""
    with no_grad():
        y = fn(x)
    params = tuple(p for p in _parameters_of(fn) if p.requires_grad)
    if not x.requires_grad and not params:
        return y

    def backward(g):
        inner = Tensor(x.data, requires_grad=x.requires_grad)
        out = fn(inner)
        held = meter.hold_bytes(graph_bytes(out, exclude=(x.data,))) if meter else 0
        out.backward(g)  # the parameters' gradients accumulate here, hooks and all
        if meter:
            meter.release(held)
        return (inner.grad, *(None,) * len(params))
    # the parameters are inputs of the node (so that it is recorded even when x needs no
    # gradient, as for the first block); their gradients come from the inner backward
    return Tensor._make(y.data, (x, *params), backward)


def _parameters_of(fn) -> tuple:
    return tuple(fn.parameters()) if hasattr(fn, "parameters") else ()


def blocks_of(model: Sequential) -> list:
    """The children of ``model`` as blocks: each layer that owns parameters with the
    parameter-free layers after it (and any before the first)."""
    out = []
    for _, module in model.named_children():
        if module._parameters or not out:
            out.append([])
        out[-1].append(module)
    return [Sequential(*block) for block in out]


class Recomputed:
    """Calls ``model`` block by block, each through ``checkpoint`` (the training forward of a
    strategy with ``--recompute``; evaluation, under ``no_grad``, calls the model itself)."""

    def __init__(self, model: Sequential, meter=None):
        self.blocks, self.meter = blocks_of(model), meter

    def __call__(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = checkpoint(block, x, self.meter)
        return x
