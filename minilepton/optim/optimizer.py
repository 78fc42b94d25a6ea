"""The ``Optimizer`` base: a parameter list, per-parameter state, zero_grad/step, state dicts.

An update reads ``p.grad`` and changes ``p.data`` in place (so every reference to the parameter
array, e.g. a shared-memory bucket or a pipeline stage, sees the new values), under
``no_grad()``, one vectorised expression per parameter. Hyperparameters are plain attributes
(``opt.lr = 0.01`` works between steps) read as Python floats at each step: a NumPy float64
scalar would promote float32 parameters to float64 under NumPy 2's rules, a Python float does not.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor, no_grad
from ..nn.module import StateDictError  # one error type for model and optimizer state dicts


class Optimizer:
    """Subclasses list their hyperparameter attributes in ``hyperparameters`` and implement
    ``_update(p, g, state)`` for one parameter ``p`` with gradient ``g`` and its state dict."""

    hyperparameters: tuple = ()

    def __init__(self, params):
        params = list(params)
        if not params:
            raise ValueError("the optimizer got an empty parameter list")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("the optimizer got the same parameter twice")
        for i, p in enumerate(params):
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise TypeError(f"parameter {i} is not a Tensor that requires grad")
        self.params = params
        self.state = [{} for _ in params]  # per parameter: "step" and moment arrays
        self._scratch_buffers = {}  # (array type, dtype, slot) -> flat buffer
        self._scratch_views = {}    # the same key + shape -> a view of that buffer

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None (the next backward stores, not adds)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a gradient; parameters without one are skipped."""
        with no_grad():
            for p, state in zip(self.params, self.state):
                if p.grad is not None:
                    self._update(p, p.grad, state)

    def _update(self, p, g, state: dict) -> None:
        raise NotImplementedError

    def _scratch(self, like, slot: int = 0):
        """A temporary shaped like ``like``, carved from a buffer the optimizer keeps.

        ``p -= lr * g`` would allocate and free a parameter-sized temporary per parameter per
        step. While the step's graph is still alive (the caller holds the loss) those blocks
        come from fresh memory at the top of the heap, and when the graph goes the C allocator
        hands them back to the OS, so every step page-faults them in again: about 3,900 faults
        per step of the 784-1024-1024-10 MLP, 0.5-1.5 % of its time. One kept buffer per
        (array type, dtype, slot), as large as the largest parameter, avoids that.
        """
        key = (type(like), like.dtype, slot, like.shape)
        view = self._scratch_views.get(key)
        if view is None:
            buf_key = key[:3]
            buf = self._scratch_buffers.get(buf_key)
            if buf is None or buf.size < like.size:
                size = max((p.data.size for p in self.params if p.data.dtype == like.dtype),
                           default=0)
                buf = backend.xp_of(like).empty(max(size, like.size), like.dtype)
                self._scratch_buffers[buf_key] = buf
                self._scratch_views.clear()  # views of a replaced buffer
            view = self._scratch_views[key] = buf[:like.size].reshape(like.shape)
        return view

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """``{"type", "hyperparameters", "state": {index: {"step": int, name: NumPy array}}}``;
        indices follow the order of the parameter list given to the constructor."""
        state = {}
        for i, s in enumerate(self.state):
            if s:
                state[i] = {k: (v if isinstance(v, int) else backend.to_numpy(v).copy())
                            for k, v in s.items()}
        hyper = {name: getattr(self, name) for name in self.hyperparameters}
        return {"type": type(self).__name__, "hyperparameters": hyper, "state": state}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyperparameters, step counts and moments (copies); checks everything first."""
        kind = state_dict.get("type")
        if kind != type(self).__name__:
            raise StateDictError(f"a {kind} state dict cannot be loaded into {type(self).__name__}")
        hyper = dict(state_dict.get("hyperparameters", {}))
        missing = [k for k in self.hyperparameters if k not in hyper]
        unexpected = [k for k in hyper if k not in self.hyperparameters]
        if missing or unexpected:
            raise StateDictError(f"{kind} state dict: missing hyperparameters {missing}, "
                                 f"unexpected {unexpected}")
        loaded = [{} for _ in self.params]
        for key, s in state_dict.get("state", {}).items():
            i = int(key)
            if not 0 <= i < len(self.params):
                raise StateDictError(f"{kind} state dict has state for parameter {i}, but the "
                                     f"optimizer has {len(self.params)} parameters")
            p = self.params[i]
            for name, value in s.items():
                if name == "step":
                    loaded[i][name] = int(value)
                    continue
                if tuple(np.shape(value)) != p.shape:
                    raise StateDictError(f"{kind} state dict: state[{i}][{name!r}] has shape "
                                         f"{tuple(np.shape(value))}, parameter {i} has {p.shape}")
                loaded[i][name] = backend.xp_of(p.data).array(value, dtype=p.dtype)
        for name in self.hyperparameters:
            value = hyper[name]
            setattr(self, name, tuple(float(v) for v in value) if np.ndim(value) else float(value))
        self.state = loaded

    def __repr__(self):
        hyper = ", ".join(f"{k}={getattr(self, k)}" for k in self.hyperparameters)
        return f"{type(self).__name__}({len(self.params)} parameters, {hyper})"


FLUSH_EVERY = 32  # steps between two flushes of a decaying state (see ``flush_subnormals``)


def flush_subnormals(state, xp) -> None:
    """Set the subnormal entries of a moment (|x| < the dtype's smallest normal) to zero.

    A moment whose gradient stays 0 (a weight of a pixel that is always 0) decays as βᵗ and
    reaches the subnormal range after several hundred steps, where the CPU does arithmetic
    through a slow microcode path: with 38 % of an Adam first moment subnormal, its update took
    762 µs instead of 212 µs (784×128 float32). Flushed every ``FLUSH_EVERY`` steps, no entry
    stays subnormal for long; a value under 1.2e-38 moves no parameter (its update is far below
    one unit in the last place of any weight), so training is unchanged.
    """
    tiny = np.finfo(state.dtype).tiny
    state[xp.abs(state) < tiny] = 0
