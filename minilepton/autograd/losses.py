"""Fused, numerically stable losses: one graph node each, with a closed-form backward.

Composing cross-entropy from exp, sum and log would overflow for large logits and cost five
nodes; the fused forms subtract the row maximum (log-sum-exp trick) and differentiate in one step.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .tensor import Tensor

REDUCTIONS = ("mean", "sum")


def _labels(labels, n_rows: int, n_classes: int, xp):
    labels = labels.data if isinstance(labels, Tensor) else labels
    if type(labels) is not np.ndarray:
        labels = xp.asarray(labels)
    if labels.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},) to match the logits, not {labels.shape}")
    kind = labels.dtype.kind
    if kind not in "iu":
        if kind == "f" and bool((labels == xp.round(labels)).all()):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"labels must be integers (class indices), not {labels.dtype}")
    # One reduction checks both ends: seen as unsigned, a negative label is huge.
    unsigned = labels.view(labels.dtype.str.replace("i", "u"))
    if n_rows and int(unsigned.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}); got {int(labels.min())}..{int(labels.max())}")
    return labels


def _scale(n: int, reduction: str) -> int:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, not {reduction!r}")
    return max(n, 1) if reduction == "mean" else 1


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """out = x − log Σ eˣ (along ``axis``);  ∂x = g − softmax(x) · Σ g."""
    xp = backend.xp_of(x.data)
    shifted = x.data - x.data.max(axis=axis, keepdims=True)
    out = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=axis, keepdims=True),)
    return Tensor._make(out, (x,), backward)


def cross_entropy(logits: Tensor, labels, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,).

    L = (1/N) Σᵢ [log Σⱼ exp zᵢⱼ − zᵢ,yᵢ]   (``reduction="sum"`` drops the 1/N);
    ∂L/∂zᵢⱼ = (softmax(zᵢ)ⱼ − [j = yᵢ]) / N.
    """
    z = logits.data
    if z.ndim != 2:
        raise ValueError(f"cross_entropy needs logits of shape (N, C), not {z.shape}")
    xp = backend.xp_of(z)
    n, c = z.shape
    y = _labels(labels, n, c, xp)
    scale = _scale(n, reduction)
    rows = xp.arange(n)
    shifted = z - z.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    loss = (xp.log(total).sum() - shifted[rows, y].sum()) / scale

    def backward(g):
        grad = e / total
        grad[rows, y] -= 1
        grad *= g / scale
        return (grad,)
    return Tensor._make(loss, (logits,), backward)


def binary_cross_entropy(probs: Tensor, targets, reduction: str = "mean", eps: float = 1e-12) -> Tensor:
    """BCE of *probabilities* p (e.g. a sigmoid output) against targets y in [0, 1].

    L = −(1/N) Σ [y log p + (1 − y) log(1 − p)]  (p clipped to [eps, 1 − eps]);
    ∂L/∂p = (p − y) / (p (1 − p)) / N.  The article's §4 example uses this form.
    """
    p = probs.data
    xp = backend.xp_of(p)
    y = xp.asarray(targets.data if isinstance(targets, Tensor) else targets, dtype=p.dtype)
    if y.shape != p.shape:
        y = xp.broadcast_to(y, p.shape)
    scale = _scale(p.size, reduction)
    pc = xp.clip(p, eps, 1 - eps)
    loss = -(y * xp.log(pc) + (1 - y) * xp.log(1 - pc)).sum() / scale

    def backward(g):
        return ((pc - y) / (pc * (1 - pc)) * (g / scale),)
    return Tensor._make(loss, (probs,), backward)


def binary_cross_entropy_with_logits(logits: Tensor, targets, reduction: str = "mean") -> Tensor:
    """BCE of *logits* z (before the sigmoid) against targets y; stable for any z.

    L = (1/N) Σ [max(z, 0) − z y + log(1 + e^−|z|)];  ∂L/∂z = (σ(z) − y) / N.
    """
    z = logits.data
    xp = backend.xp_of(z)
    y = xp.asarray(targets.data if isinstance(targets, Tensor) else targets, dtype=z.dtype)
    if y.shape != z.shape:
        y = xp.broadcast_to(y, z.shape)
    scale = _scale(z.size, reduction)
    loss = (xp.maximum(z, 0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))).sum() / scale

    def backward(g):
        sig = (xp.tanh(z * 0.5) + 1) * 0.5
        return ((sig - y) * (g / scale),)
    return Tensor._make(loss, (logits,), backward)


def mse(pred: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error  L = (1/N) Σ (p − t)²  over all N elements (``"sum"`` drops 1/N);
    ∂L/∂p = 2 (p − t) / N, and −that for ``target`` when it is a Tensor that requires grad."""
    p = pred.data
    xp = backend.xp_of(p)
    target = target if isinstance(target, Tensor) else Tensor(xp.asarray(target, dtype=p.dtype))
    diff = p - target.data
    if diff.shape != p.shape:
        raise ValueError(f"mse: target of shape {target.shape} does not match pred {p.shape}")
    scale = _scale(diff.size, reduction)
    loss = (diff * diff).sum() / scale

    def backward(g):
        d = diff * (g * (2.0 / scale))
        return (d if pred.requires_grad else None, -d if target.requires_grad else None)
    return Tensor._make(loss, (pred, target), backward)
