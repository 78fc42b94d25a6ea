"""``Parameter`` and ``Module``: the containers every layer, model and parallel strategy builds on.

A Module registers, in assignment order, the Parameters and sub-Modules stored on it as
attributes. Names follow the attribute path (``"0.weight"`` in a Sequential, ``"fc.bias"``
elsewhere), so ``named_parameters()`` and ``state_dict()`` are deterministic: the same model
code gives the same names in the same order on every rank and in every run.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..autograd import Tensor


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates (``requires_grad=True``)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None, name: str | None = None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, name=name)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class StateDictError(ValueError):
    """A state dict does not fit the module or optimizer it is loaded into."""


class Module:
    """Base class: subclasses set Parameters / Modules as attributes and define ``forward``.

    ``module(x)`` calls ``module.forward(x)``. ``training`` is True after construction and
    ``train()``, False after ``eval()`` (the layers here behave the same in both; the flag is
    for layers such as dropout, and for the training loop).
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", {})  # name -> Parameter, in registration order
        object.__setattr__(self, "_modules", {})     # name -> Module, in registration order
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        params = self.__dict__.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                                 f"before assigning {name!r}")
        # Attributes live in __dict__ as usual (fast lookups in forward); the registries only
        # remember which names are parameters and sub-modules, and in what order.
        params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        object.__delattr__(self, name)

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    # ----------------------------------------------------------------- traversal
    def named_children(self):
        """``(name, module)`` for the direct sub-modules, in registration order."""
        return list(self._modules.items())

    def children(self):
        return [m for _, m in self._modules.items()]

    def named_modules(self, prefix: str = ""):
        """``(dotted name, module)`` for this module and every descendant, depth first."""
        out = [(prefix, self)]
        for name, child in self._modules.items():
            out.extend(child.named_modules(f"{prefix}.{name}" if prefix else name))
        return out

    def modules(self):
        return [m for _, m in self.named_modules()]

    def named_parameters(self, prefix: str = "") -> list:
        """``(dotted name, Parameter)`` pairs: own parameters first, then each child's, in
        registration order. A Parameter shared by two modules is listed once (first name)."""
        out, seen = [], set()
        for mod_name, module in self.named_modules(prefix):
            for name, p in module._parameters.items():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((f"{mod_name}.{name}" if mod_name else name, p))
        return out

    def parameters(self) -> list:
        """The Parameters of ``named_parameters()``, in the same order."""
        return [p for _, p in self.named_parameters()]

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """``{name: NumPy copy of the parameter}`` in ``named_parameters()`` order."""
        state = {}
        for name, p in self.named_parameters():
            array = backend.to_numpy(p.data)
            state[name] = array.copy() if array is p.data else array  # GPU -> host is a copy
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state``'s arrays into the parameters, in place (references stay valid).

        Every key must match a parameter and every shape must agree; otherwise a
        ``StateDictError`` (a ValueError) names the keys, and no parameter is changed.
        """
        named = dict(self.named_parameters())
        missing = [k for k in named if k not in state]
        unexpected = [k for k in state if k not in named]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise StateDictError(f"state dict does not fit {type(self).__name__}: "
                                 + "; ".join(parts))
        for name, p in named.items():
            shape = tuple(np.shape(state[name]))
            if shape != p.shape:
                raise StateDictError(f"state dict key {name!r} has shape {shape}, "
                                     f"but the parameter has shape {p.shape}")
        for name, p in named.items():
            p.data[...] = backend.xp_of(p.data).asarray(state[name])

    # ----------------------------------------------------------------- modes and devices
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Clear every parameter's ``.grad`` (to None, so the next backward stores afresh)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device: str) -> Module:
        """Move every parameter (and its gradient) to ``"cpu"``, ``"gpu"`` or ``"auto"``.

        Create optimizers after moving: their state is allocated next to the parameters.
        """
        device = backend.resolve_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        return self

    # ----------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)
