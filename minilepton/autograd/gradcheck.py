"""Checking a backward rule against central finite differences.

For a function f of tensors and a fixed random cotangent v, the analytic vector-Jacobian
product ∂(v·f)/∂xₖ from ``backward`` must match (v·f(x + h eₖ) − v·f(x − h eₖ)) / 2h for every
element k of every input. Use float64 inputs: float32 differences are too coarse.
"""

from __future__ import annotations

import numpy as np

from .grad_mode import no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagreed with the finite-difference one."""


def numerical_grad(fn, inputs, cotangent, index: int, eps: float) -> np.ndarray:
    """Central-difference gradient of v·fn(*inputs) with respect to ``inputs[index]``."""
    x = inputs[index].data
    grad = np.zeros(x.shape, dtype=np.float64)
    flat = x.reshape(-1)  # a view: writes go to the tensor
    with no_grad():
        for k in range(flat.size):
            saved = flat[k]
            flat[k] = saved + eps
            plus = float((np.asarray(fn(*inputs).numpy()) * cotangent).sum())
            flat[k] = saved - eps
            minus = float((np.asarray(fn(*inputs).numpy()) * cotangent).sum())
            flat[k] = saved
            grad.reshape(-1)[k] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-5,
              seed: int = 0) -> bool:
    """Raise GradcheckError (naming the input and element) unless backward matches differences.

    ``fn(*inputs)`` must return a Tensor; ``inputs`` are Tensors (float64 recommended); only
    those with ``requires_grad=True`` are checked. Returns True when every gradient agrees.
    """
    inputs = list(inputs)
    for t in inputs:
        if t.data.dtype != np.float64:
            raise ValueError("gradcheck needs float64 inputs; float32 differences are too coarse")
    out = fn(*inputs)
    cotangent = np.random.default_rng(seed).standard_normal(out.shape)
    for t in inputs:
        t.grad = None
    out.backward(cotangent.astype(out.dtype))
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        analytic = np.zeros(t.shape) if t.grad is None else np.asarray(t.grad, dtype=np.float64)
        numeric = numerical_grad(fn, inputs, cotangent, i, eps)
        bad = ~np.isclose(analytic, numeric, rtol=rtol, atol=atol)
        if bad.any():
            k = tuple(int(j) for j in np.argwhere(bad)[0])
            raise GradcheckError(
                f"gradient of input {i} (shape {t.shape}) differs at index {k}: "
                f"backward gives {analytic[k]:.10g}, central differences give {numeric[k]:.10g} "
                f"({int(bad.sum())} of {bad.size} elements differ)")
    return True
