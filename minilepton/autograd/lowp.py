"""16-bit floating point (bfloat16, float16) on a CPU, computed the way tensor cores compute it.

NumPy multiplies 16-bit matrices in slow element loops (bfloat16 comes from ``ml_dtypes`` and
has no BLAS at all), so a product of 16-bit operands is emulated as the hardware does it: the
operands, already rounded to 16 bits, are multiplied and summed in float32, and the result is
rounded once to 16 bits (a bias is added in float32 before that rounding, as a fused epilogue
would). Sums over a batch axis (a bias gradient) also accumulate in float32; elementwise ops
(ReLU, additions) stay in 16 bits. What is stored between ops, the activations and gradients,
is therefore 16-bit, while no product loses more than the final rounding. On a GPU (CuPy)
float16 products run natively in cuBLAS, which also accumulates in float32.

    cast      y = round_dtype(x)                 ∂x = g, cast back to x's dtype
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .tensor import Tensor


def emulated(a) -> bool:
    """Is ``a`` a 16-bit floating array in host memory (whose products are emulated)?"""
    return type(a) is np.ndarray and a.dtype.itemsize == 2 and backend.is_floating(a.dtype)


def mm(a, b, add=None):
    """``a @ b (+ add)``; for 16-bit host arrays, in float32 with one rounding at the end."""
    if not emulated(a):
        out = a @ b
        if add is not None:
            out += add
        return out
    out = a.astype(np.float32) @ b.astype(np.float32)
    if add is not None:
        out += add.astype(np.float32)
    return out.astype(a.dtype)


def sum_to(g, axis, keepdims: bool = False):
    """``g.sum(axis)``; 16-bit host arrays accumulate in float32 (a bfloat16 running sum stops
    growing at 256 ones), then round once."""
    if not emulated(g):
        return g.sum(axis=axis, keepdims=keepdims)
    return g.sum(axis=axis, keepdims=keepdims, dtype=np.float32).astype(g.dtype)


def cast(x: Tensor, dtype) -> Tensor:
    """y = x rounded to ``dtype``;  ∂x = g cast back to x's dtype (the identity's gradient)."""
    dtype = np.dtype(dtype)
    source = x.data.dtype
    if source == dtype:
        return x
    return Tensor._make(x.data.astype(dtype), (x,), lambda g: (g.astype(source),))
