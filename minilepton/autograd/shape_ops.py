"""Reductions and shape operations, each with its backward rule.

A reduction's backward spreads ``g`` back over the reduced axes (sum: copy, mean: copy / n,
max: to the arg-max positions); a shape op's backward undoes the reshaping on ``g``.
"""

from __future__ import annotations

import builtins

import numpy as np

from .. import backend
from .tensor import Tensor


def _axes(axis, ndim) -> tuple:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    return tuple(int(ax) % ndim for ax in axes) if ndim else ()


def _keep(g, shape, axes):
    """``g`` reshaped so that it broadcasts against the unreduced ``shape``."""
    return g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))


def sum(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """out = Σ a over ``axis``;  ∂a = g broadcast back over the summed axes."""
    shape, axes = a.data.shape, _axes(axis, a.data.ndim)
    xp = backend.xp_of(a.data)
    return Tensor._make(a.data.sum(axis=axes, keepdims=keepdims), (a,),
                        lambda g: (xp.broadcast_to(_keep(g, shape, axes), shape),))


def mean(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """out = (1/n) Σ a over ``axis``;  ∂a = g / n broadcast back."""
    shape, axes = a.data.shape, _axes(axis, a.data.ndim)
    n = int(np.prod([shape[i] for i in axes])) if axes else 1
    xp = backend.xp_of(a.data)
    return Tensor._make(a.data.sum(axis=axes, keepdims=keepdims) / n, (a,),
                        lambda g: (xp.broadcast_to(_keep(g, shape, axes) / n, shape),))


def max(a: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    """out = max a over ``axis``;  ∂a = g shared equally among the positions that hold the max."""
    A, axes = a.data, _axes(axis, a.data.ndim)
    top = A.max(axis=axes, keepdims=True)

    def backward(g):
        mask = A == top
        return (mask * (_keep(g, A.shape, axes) / mask.sum(axis=axes, keepdims=True, dtype=A.dtype)),)
    out = top if keepdims else top.reshape(tuple(n for i, n in enumerate(A.shape) if i not in axes))
    return Tensor._make(out, (a,), backward)


def reshape(a: Tensor, *shape) -> Tensor:
    """out = a viewed with a new shape;  ∂a = g reshaped back."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    old = a.data.shape
    return Tensor._make(a.data.reshape(shape), (a,), lambda g: (g.reshape(old),))


def transpose(a: Tensor, *axes) -> Tensor:
    """out = a with axes permuted (reversed by default);  ∂a = g permuted back."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    axes = axes or tuple(reversed(range(a.data.ndim)))
    inverse = tuple(np.argsort(axes))
    return Tensor._make(a.data.transpose(axes), (a,), lambda g: (g.transpose(inverse),))


def getitem(a: Tensor, index) -> Tensor:
    """out = a[index];  ∂a = zeros with g added at ``index`` (repeated indices add up)."""
    if isinstance(index, Tensor):
        index = index.data
    A = a.data
    xp = backend.xp_of(A)

    def backward(g):
        full = xp.zeros_like(A)
        if _is_basic(index):
            full[index] = g
        else:
            backend.scatter_add(full, index, g)
        return (full,)
    return Tensor._make(A[index], (a,), backward)


def _is_basic(index) -> bool:
    """True for slices, ints, None and Ellipsis, which never select one element twice."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(isinstance(p, (slice, int, np.integer, type(None), type(Ellipsis))) for p in parts)


def concatenate(tensors, axis: int = 0) -> Tensor:
    """out = [t₀ | t₁ | …] along ``axis``;  ∂tᵢ = the slice of g that tᵢ filled."""
    tensors = tuple(tensors)
    xp = backend.xp_of(tensors[0].data)
    ends = np.cumsum([t.data.shape[axis] for t in tensors])[:-1]

    def backward(g):
        return tuple(xp.split(g, ends, axis=axis))
    return Tensor._make(xp.concatenate([t.data for t in tensors], axis=axis), tensors, backward)


def split(a: Tensor, sections, axis: int = 0) -> list:
    """Pieces of ``a`` along ``axis``: ``sections`` is a count of equal parts or a list of sizes.

    Each piece's backward writes its g into the piece's place in a zero array of a's shape.
    """
    length = a.data.shape[axis]
    if isinstance(sections, (int, np.integer)):
        if sections < 1 or length % sections:
            raise ValueError(f"cannot split an axis of length {length} into {sections} equal parts")
        sizes = [length // sections] * int(sections)
    else:
        sizes = [int(s) for s in sections]
        if builtins.sum(sizes) != length or min(sizes) < 0:
            raise ValueError(f"split sizes {sizes} do not add up to the axis length {length}")
    pieces, start = [], 0
    ax = axis % a.data.ndim
    for size in sizes:
        index = (slice(None),) * ax + (slice(start, start + size),)
        pieces.append(getitem(a, index))
        start += size
    return pieces


def stack(tensors, axis: int = 0) -> Tensor:
    """out = tensors stacked on a new axis;  ∂tᵢ = g's i-th slice along it."""
    tensors = list(tensors)
    return concatenate([reshape(t, _with_axis(t.data.shape, axis)) for t in tensors], axis=axis)


def _with_axis(shape, axis):
    axis = axis % (len(shape) + 1)
    return shape[:axis] + (1,) + shape[axis:]


Tensor.sum = sum
Tensor.mean = mean
Tensor.max = max
Tensor.reshape = reshape
Tensor.transpose = transpose
Tensor.T = property(lambda self: transpose(self))
Tensor.__getitem__ = getitem
