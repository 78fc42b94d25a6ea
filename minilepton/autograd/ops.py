"""Arithmetic and elementwise operations, each with its backward rule.

Notation: ``g`` is ∂L/∂out, the gradient arriving from the output. A binary op broadcasts its
inputs, so the gradient of an input is summed back to that input's shape (``unbroadcast``).

Python numbers stay Python numbers (NumPy keeps float32 for them); NumPy scalars and 0-d
arrays would silently promote float32 to float64, so they are turned into Python floats first.
"""

from __future__ import annotations

import numbers

import numpy as np

from .. import backend
from .lowp import mm, sum_to
from .tensor import Tensor


def unbroadcast(g, shape):
    """Sum ``g`` over the axes that broadcasting added or stretched, giving ``shape``."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = sum_to(g, tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if stretched:
        g = sum_to(g, stretched, keepdims=True)
    return g


def _other(a: Tensor, b):
    """Normalise the second operand: a Tensor, or a Python number (never a NumPy scalar)."""
    if isinstance(b, Tensor):
        if type(a.data) is not type(b.data) and backend.device_of(a.data) != backend.device_of(b.data):
            raise backend.DeviceError(
                f"an operation mixes a {a.device.upper()} tensor with a {b.device.upper()} tensor; "
                "move both to one device first")
        return b
    if isinstance(b, numbers.Number) or (isinstance(b, np.ndarray) and b.ndim == 0):
        # np.float64 subclasses float, so test the exact type: NumPy scalars become floats
        return b if type(b) in (int, float) else float(b)
    return _other(a, Tensor(b, dtype=a.dtype))  # an array: on a's device, or a DeviceError


def add(a: Tensor, b) -> Tensor:
    """out = a + b;  ∂a = g, ∂b = g (each summed back to its shape)."""
    b = _other(a, b)
    if not isinstance(b, Tensor):
        return Tensor._make(a.data + b, (a,), lambda g: (g,))
    sa, sb = a.data.shape, b.data.shape

    def backward(g):
        return (unbroadcast(g, sa) if a.requires_grad else None,
                unbroadcast(g, sb) if b.requires_grad else None)
    return Tensor._make(a.data + b.data, (a, b), backward)


def sub(a: Tensor, b) -> Tensor:
    """out = a − b;  ∂a = g, ∂b = −g."""
    b = _other(a, b)
    if not isinstance(b, Tensor):
        return Tensor._make(a.data - b, (a,), lambda g: (g,))
    sa, sb = a.data.shape, b.data.shape

    def backward(g):
        return (unbroadcast(g, sa) if a.requires_grad else None,
                unbroadcast(-g, sb) if b.requires_grad else None)
    return Tensor._make(a.data - b.data, (a, b), backward)


def rsub(a: Tensor, b) -> Tensor:
    """out = b − a for a non-tensor b;  ∂a = −g."""
    b = _other(a, b)
    if isinstance(b, Tensor):
        return sub(b, a)
    return Tensor._make(b - a.data, (a,), lambda g: (-g,))


def neg(a: Tensor) -> Tensor:
    """out = −a;  ∂a = −g."""
    return Tensor._make(-a.data, (a,), lambda g: (-g,))


def mul(a: Tensor, b) -> Tensor:
    """out = a · b;  ∂a = g · b, ∂b = g · a."""
    b = _other(a, b)
    if not isinstance(b, Tensor):
        return Tensor._make(a.data * b, (a,), lambda g: (g * b,))
    A, B = a.data, b.data

    def backward(g):
        return (unbroadcast(g * B, A.shape) if a.requires_grad else None,
                unbroadcast(g * A, B.shape) if b.requires_grad else None)
    return Tensor._make(A * B, (a, b), backward)


def div(a: Tensor, b) -> Tensor:
    """out = a / b;  ∂a = g / b, ∂b = −g · out / b."""
    b = _other(a, b)
    if not isinstance(b, Tensor):
        return Tensor._make(a.data / b, (a,), lambda g: (g / b,))
    A, B = a.data, b.data
    out = A / B

    def backward(g):
        return (unbroadcast(g / B, A.shape) if a.requires_grad else None,
                unbroadcast(-g * out / B, B.shape) if b.requires_grad else None)
    return Tensor._make(out, (a, b), backward)


def rdiv(a: Tensor, b) -> Tensor:
    """out = b / a for a non-tensor b;  ∂a = −g · out / a."""
    b = _other(a, b)
    if isinstance(b, Tensor):
        return div(b, a)
    A = a.data
    out = b / A
    return Tensor._make(out, (a,), lambda g: (-g * out / A,))


def power(a: Tensor, p) -> Tensor:
    """out = a ** p for a number p;  ∂a = g · p · a^(p−1)."""
    if isinstance(p, Tensor) or not isinstance(_other(a, p), (int, float)):
        raise TypeError("Tensor ** x needs a number x (tensor exponents are not supported)")
    p = _other(a, p)
    A = a.data
    return Tensor._make(A ** p, (a,), lambda g: (g * (p * A ** (p - 1)),))


def matmul(a: Tensor, b) -> Tensor:
    """out = a @ b;  ∂a = g @ bᵀ, ∂b = aᵀ @ g (batch axes summed back, 1-D operands handled).
    Two 16-bit matrices multiply in float32 and round once (``lowp``)."""
    b = _other(a, b)
    if not isinstance(b, Tensor):
        b = Tensor(b, dtype=a.dtype)
    A, B = a.data, b.data
    if A.ndim == 2 and B.ndim == 2:
        def backward(g):
            return (mm(g, B.T) if a.requires_grad else None,
                    mm(A.T, g) if b.requires_grad else None)
        return Tensor._make(mm(A, B), (a, b), backward)
    if A.ndim == 0 or B.ndim == 0:
        raise ValueError("matmul needs operands of at least one dimension; use * for scalars")

    def backward_nd(g):
        xp = backend.xp_of(g)
        A2 = A[None, :] if A.ndim == 1 else A
        B2 = B[:, None] if B.ndim == 1 else B
        if A.ndim == 1 and B.ndim == 1:  # a dot product: g is 0-d
            g2 = g.reshape(1, 1)
        elif A.ndim == 1:  # (n,) @ (..., n, m): g is (..., m)
            g2 = xp.expand_dims(g, -2)
        elif B.ndim == 1:  # (..., k, n) @ (n,): g is (..., k)
            g2 = xp.expand_dims(g, -1)
        else:
            g2 = g
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(g2 @ xp.swapaxes(B2, -1, -2), A2.shape).reshape(A.shape)
        if b.requires_grad:
            gb = unbroadcast(xp.swapaxes(A2, -1, -2) @ g2, B2.shape).reshape(B.shape)
        return ga, gb
    return Tensor._make(A @ B, (a, b), backward_nd)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """out = x @ W + b in one node (x of shape (N, in), W (in, out), b (out,));
    ∂x = g @ Wᵀ, ∂W = xᵀ @ g, ∂b = Σₙ g.

    The same as ``x @ W + b`` with one node less and the bias added into the fresh product in
    place (the unfused form allocates and fills a second (N, out) array). Other shapes or mixed
    dtypes take the unfused path; 16-bit operands multiply in float32 (``lowp``).
    """
    X, W = x.data, weight.data
    if X.ndim != 2 or W.ndim != 2 or X.dtype != W.dtype or (
            bias is not None and (bias.data.ndim != 1 or bias.data.dtype != W.dtype)):
        out = matmul(x, weight)
        return out if bias is None else add(out, bias)
    if bias is None:
        def backward(g):
            return (mm(g, W.T) if x.requires_grad else None,
                    mm(X.T, g) if weight.requires_grad else None)
        return Tensor._make(mm(X, W), (x, weight), backward)

    def backward_bias(g):
        return (mm(g, W.T) if x.requires_grad else None,
                mm(X.T, g) if weight.requires_grad else None,
                sum_to(g, 0) if bias.requires_grad else None)
    return Tensor._make(mm(X, W, bias.data), (x, weight, bias), backward_bias)


def rmatmul(a: Tensor, b) -> Tensor:
    return matmul(Tensor(b, dtype=a.dtype), a)


def exp(a: Tensor) -> Tensor:
    """out = eˣ;  ∂a = g · out."""
    out = backend.xp_of(a.data).exp(a.data)
    return Tensor._make(out, (a,), lambda g: (g * out,))


def log(a: Tensor) -> Tensor:
    """out = ln a;  ∂a = g / a."""
    A = a.data
    return Tensor._make(backend.xp_of(A).log(A), (a,), lambda g: (g / A,))


def relu(a: Tensor) -> Tensor:
    """out = max(a, 0);  ∂a = g · [a > 0]."""
    out = backend.xp_of(a.data).maximum(a.data, 0)
    return Tensor._make(out, (a,), lambda g: (g * (out > 0),))


def sigmoid(a: Tensor) -> Tensor:
    """out = σ(a) = 1 / (1 + e⁻ᵃ), computed as (1 + tanh(a/2)) / 2 (no overflow);
    ∂a = g · out · (1 − out)."""
    xp = backend.xp_of(a.data)
    out = xp.tanh(a.data * 0.5)
    out += 1
    out *= 0.5
    return Tensor._make(out, (a,), lambda g: (g * out * (1 - out),))


def tanh(a: Tensor) -> Tensor:
    """out = tanh a;  ∂a = g · (1 − out²)."""
    out = backend.xp_of(a.data).tanh(a.data)
    return Tensor._make(out, (a,), lambda g: (g * (1 - out * out),))


Tensor.__add__ = add
Tensor.__radd__ = add
Tensor.__sub__ = sub
Tensor.__rsub__ = rsub
Tensor.__neg__ = neg
Tensor.__mul__ = mul
Tensor.__rmul__ = mul
Tensor.__truediv__ = div
Tensor.__rtruediv__ = rdiv
Tensor.__pow__ = power
Tensor.__matmul__ = matmul
Tensor.__rmatmul__ = rmatmul
Tensor.exp = exp
Tensor.log = log
Tensor.relu = relu
Tensor.sigmoid = sigmoid
Tensor.tanh = tanh
