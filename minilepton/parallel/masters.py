"""What the optimizer steps when it does not step the model's parameters themselves.

Plain training hands the model's parameters to the optimizer. Two memory techniques change that:
mixed precision (the optimizer steps full-precision *masters* θ of the 16-bit parameters θ₁₆)
and ZeRO (it steps only the block of each flat parameter group that this rank owns).
``MasterWeights`` covers both. It is given the arrays this rank updates, ``owned`` (whole 16-bit
parameters, or owned blocks), and at each step their gradients g, and does

    θ ← optimizer(θ, g / S)        in the masters' dtype (S: the loss scale, 1 without fp16)
    owned ← round(θ)               a no-op when the master *is* the owned array

When the dtypes agree (ZeRO in full precision) the masters are views of the owned arrays and
one optimizer step updates them all. When they differ, the masters are copies, and the optimizer
steps them one at a time (it skips parameters whose ``.grad`` is None), each gradient unscaled
into one reusable buffer: the full-precision gradients never exist all at once, so they cost one
piece's bytes (``buffers``), not a copy of every gradient. Each update is elementwise, so
stepping piece by piece, or a flat block instead of whole tensors, changes no bit.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .. import backend
from ..nn import Parameter
from .memory import optimizer_arrays
from .precision import overflowed


class MasterWeights:
    """Masters of ``owned`` (starting from ``initial``, default the owned values themselves),
    the optimizer ``make_optimizer(masters)`` over them, and the optional ``scaler``
    (``precision.LossScaler``) whose overflow vote runs over ``vote_comm``."""

    def __init__(self, owned, make_optimizer, master_dtype, initial=None, scaler=None,
                 vote_comm=None):
        self.owned = list(owned)
        master_dtype = np.dtype(master_dtype)
        self.copies = any(a.dtype != master_dtype for a in self.owned)
        initial = self.owned if initial is None else list(initial)
        self.masters = [Parameter(backend.xp_of(a).array(a, dtype=master_dtype) if self.copies
                                  else a) for a in initial]
        self.optimizer = make_optimizer(self.masters)
        self.scaler, self.vote_comm = scaler, vote_comm
        self.scratch = None
        if self.copies:
            size = max((a.size for a in self.owned), default=0)
            self.scratch = backend.xp_of(self.owned[0]).empty(size, master_dtype)

    @property
    def scale(self) -> float:
        return self.scaler.scale if self.scaler is not None else 1.0

    def step(self, grads) -> bool:
        """One update from ``grads`` (one per owned array; None: no gradient). False when the
        loss scaler found an overflow and the step was skipped."""
        grads = list(grads)
        if self.scaler is not None and not self.scaler.update(overflowed(grads, self.vote_comm)):
            return False
        if not self.copies:
            for m, g in zip(self.masters, grads):
                m.grad = g
            self.optimizer.step()
            for m in self.masters:
                m.grad = None
            return True
        inverse = 1.0 / self.scale
        for m, own, g in zip(self.masters, self.owned, grads):
            if g is None:
                continue
            buf = self.scratch[:g.size].reshape(g.shape)
            buf[...] = g
            if inverse != 1.0:
                buf *= inverse
            m.grad = buf
            self.optimizer.step()  # steps only m: every other master's .grad is None
            m.grad = None
            own[...] = m.data
        return True

    def arrays(self) -> dict:
        """The arrays this object adds to a rank's memory, by kind (for the tracker)."""
        masters = [m.data for m in self.masters] if self.copies else []
        return {"optimizer": masters + optimizer_arrays(self.optimizer),
                "buffers": [self.scratch] if self.scratch is not None else []}

    @contextmanager
    def swapped_into(self, params):
        """While inside, ``params`` (the model's parameters, one per master, same shapes) hold
        the masters' arrays: what a checkpoint or ``--save`` should see."""
        saved = [p.data for p in params]
        try:
            for p, m in zip(params, self.masters):
                p.data = m.data
            yield
        finally:
            for p, data in zip(params, saved):
                p.data = data

    def load_values(self, values) -> None:
        """Set the masters to ``values`` (one array per master) and round the owned arrays."""
        for m, own, v in zip(self.masters, self.owned, values):
            m.data[...] = backend.xp_of(m.data).asarray(v).reshape(m.shape)
            if self.copies:
                own[...] = m.data
