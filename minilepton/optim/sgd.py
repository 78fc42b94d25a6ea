"""Stochastic gradient descent with momentum and weight decay, in PyTorch's conventions."""

from __future__ import annotations

from .. import backend
from .optimizer import FLUSH_EVERY, Optimizer, flush_subnormals


class SGD(Optimizer):
    """SGD(params, lr, momentum=0.0, weight_decay=0.0), exactly as ``torch.optim.SGD`` with
    dampening 0 and no Nesterov:

        g ← ∇L + weight_decay · p                 (L2 decay added to the gradient)
        b ← g on the first step, else momentum · b + g   (the buffer holds a sum, not an average)
        p ← p − lr · b                             (lr scales the buffer, so changing lr mid-run
                                                   changes the next step at once)

    With ``momentum=0`` it is plain p ← p − lr · g. The article's worked example (lr=0.01, w=1,
    b=0) takes one such step.
    """

    hyperparameters = ("lr", "momentum", "weight_decay")

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD needs lr, momentum, weight_decay >= 0, "
                             f"not {lr}, {momentum}, {weight_decay}")
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)

    def _update(self, p, g, state: dict) -> None:
        lr, momentum, decay = float(self.lr), float(self.momentum), float(self.weight_decay)
        xp = backend.xp_of(p.data)
        if decay:
            decayed = xp.multiply(p.data, decay, out=self._scratch(p.data, 1))
            g = xp.add(g, decayed, out=decayed)
        if momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= momentum
                buf += g
                if state.get("step", 0) % FLUSH_EVERY == FLUSH_EVERY - 1:
                    flush_subnormals(buf, xp)  # a decayed buffer out of the subnormal range
            g = buf
        p.data -= xp.multiply(g, lr, out=self._scratch(p.data))  # no temporary allocated
        state["step"] = state.get("step", 0) + 1
