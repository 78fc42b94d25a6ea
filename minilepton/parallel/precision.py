"""Mixed precision: 16-bit forward and backward, master weights in full precision, loss scaling.

    fp32   the plain run: everything in the model's dtype (float32, or float64)
    bf16   parameters, activations and gradients in bfloat16 (float32's 8 exponent bits, 7 of
           mantissa; from ``ml_dtypes``, as NumPy has none)
    fp16   the same in float16 (5 exponent bits, 10 of mantissa), with dynamic loss scaling

With θ the master weights (the model's dtype, kept by ``masters.MasterWeights``) and S the loss
scale (1 for bf16):

    forward    θ₁₆ = round₁₆(θ),  ŷ = f(x₁₆; θ₁₆)     products in float32, rounded once (lowp)
    backward   g₁₆ = ∂(S · L)/∂θ₁₆, held in 16 bits; the loss itself is taken in float32
    update     θ ← optimizer(θ, g₁₆ / S) in full precision, then θ₁₆ = round₁₆(θ)

With Adam this is the ZeRO paper's 16 bytes per parameter: 2 (θ₁₆) + 2 (g₁₆) + 4 (θ) + 8 (Adam's
m and v); activations take half the bytes of float32. Loss scaling (Micikevicius et al., "Mixed
Precision Training", 2018): float16's smallest normal number is 6.1e-5, and gradients below it
lose their digits or vanish; multiplying the loss by S shifts them up into range. S doubles after
``growth_interval`` clean steps; a gradient that overflows to inf or NaN halves S and the step
is skipped (every rank votes, so all skip together). bfloat16 has float32's range: no scaling.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd.lowp import cast

PRECISIONS = ("fp32", "bf16", "fp16")
_LOW = {"bf16": backend.BFLOAT16, "fp16": np.dtype(np.float16)}


def compute_dtype(precision: str, dtype) -> np.dtype:
    """The dtype forward and backward run in: ``dtype`` itself for fp32, else 16 bits."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return _LOW.get(precision, np.dtype(dtype))


def cast_module(module, dtype) -> list:
    """Round every parameter of ``module`` to ``dtype`` in place of the old array; returns the
    old arrays (the full-precision values the master weights start from)."""
    old = []
    for p in module.parameters():
        old.append(p.data)
        p.data = p.data.astype(dtype)
    return old


def float32_loss(loss_fn):
    """``loss_fn`` taken on logits cast to float32 (the softmax and its log are not done in 16
    bits); the cast's backward rounds ∂L/∂logits back to the logits' dtype."""
    def loss(logits, labels):
        return loss_fn(cast(logits, np.float32), labels)
    return loss


class LossScaler:
    """Dynamic loss scale S: × ``factor`` after ``growth_interval`` clean steps, ÷ ``factor`` (and
    the step skipped) on overflow. ``update(overflow)`` says whether to apply this step."""

    def __init__(self, scale: float = 2.0 ** 16, growth_interval: int = 2000,
                 factor: float = 2.0):
        if not (scale > 0 and factor > 1 and growth_interval >= 1):
            raise ValueError(f"loss scaling needs scale > 0, factor > 1, growth_interval >= 1, "
                             f"not {scale}, {factor}, {growth_interval}")
        self.scale, self.factor = float(scale), float(factor)
        self.growth_interval = int(growth_interval)
        self.clean_steps = 0
        self.skipped_steps = 0

    def update(self, overflow: bool) -> bool:
        if overflow:
            self.scale /= self.factor
            self.clean_steps = 0
            self.skipped_steps += 1
            return False
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= self.factor
            self.clean_steps = 0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = float(state["scale"])
        self.clean_steps = int(state["clean_steps"])
        self.skipped_steps = int(state["skipped_steps"])


def overflowed(grads, comm=None) -> bool:
    """Does any gradient hold inf or NaN, on this rank or (one vote over ``comm``) any other?"""
    bad = any(g is not None and not bool(backend.xp_of(g).isfinite(g).all()) for g in grads)
    if comm is None or comm.world_size == 1:
        return bad
    vote = np.array([1.0 if bad else 0.0])
    return bool(comm.allreduce(vote, op="max")[0] > 0)
