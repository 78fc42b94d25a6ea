"""Adam (Kingma & Ba 2015, Algorithm 1), bias-corrected, with PyTorch's conventions."""

from __future__ import annotations

import math

from .. import backend
from .optimizer import FLUSH_EVERY, Optimizer, flush_subnormals


class Adam(Optimizer):
    """Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):

        g ← ∇L + weight_decay · p          (L2 decay in the gradient, as torch.optim.Adam; not AdamW)
        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²       (m = v = 0 before step 1)
        m̂ = m / (1 − β₁ᵗ),       v̂ = v / (1 − β₂ᵗ)             (t counts this parameter's steps)
        p ← p − lr · m̂ / (√v̂ + eps)

    Epsilon is added to √v̂, after the bias correction, and defaults to 1e-8: the paper's
    Algorithm 1 and PyTorch, so every step can be checked against the paper's formula.
    Keras adds its default 1e-7 to √v *before* correcting (the paper's "ε̂" form), which equals
    eps = 1e-7 / √(1 − β₂ᵗ) here: a difference that only matters while v̂ is near 1e-14 and
    is gone after the first steps. Pass ``eps=1e-7`` to come closer to a Keras run.
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        b1, b2 = (float(b) for b in betas)
        if lr < 0 or eps < 0 or weight_decay < 0 or not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam needs lr, eps, weight_decay >= 0 and betas in [0, 1), not "
                             f"lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params)
        self.lr, self.betas, self.eps = float(lr), (b1, b2), float(eps)
        self.weight_decay = float(weight_decay)

    def _update(self, p, g, state: dict) -> None:
        lr, eps, decay = float(self.lr), float(self.eps), float(self.weight_decay)
        b1, b2 = (float(b) for b in self.betas)
        xp = backend.xp_of(p.data)
        t = state["step"] = state.get("step", 0) + 1
        if decay:
            decayed = xp.multiply(p.data, decay, out=self._scratch(p.data, 1))
            g = xp.add(g, decayed, out=decayed)
        m = state.get("exp_avg")
        if m is None:
            m = state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        v = state["exp_avg_sq"]
        tmp = self._scratch(p.data)  # every temporary of the update lives here, one after another
        m *= b1
        m += xp.multiply(g, 1.0 - b1, out=tmp)
        v *= b2
        tmp = xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        if t % FLUSH_EVERY == 0:  # decayed moments out of the slow subnormal range
            flush_subnormals(m, xp)
            flush_subnormals(v, xp)
        denom = xp.sqrt(v, out=tmp)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += eps
        step = xp.divide(m, denom, out=tmp)
        step *= lr / (1.0 - b1 ** t)
        p.data -= step
