"""The Tensor and the reverse-mode engine.

A Tensor wraps one backend array (NumPy or CuPy). An operation on tensors that require
gradients records a node: its parent tensors and a ``backward`` closure that maps the gradient
of the output, ∂L/∂out, to the gradients of the parents, (∂L/∂a, ∂L/∂b, ...). ``loss.backward()``
walks the recorded graph from the loss to the leaves in topological order (Kahn's algorithm over
explicit stacks: no recursion, so no depth limit), summing the contributions that reach each
node (the multivariate chain rule) before passing it on.

Gradients of leaves accumulate: ``.grad`` holds the sum over every ``backward()`` call since it
was last cleared (``optimizer.zero_grad()`` or ``t.grad = None``), as in PyTorch. The graph is
kept after ``backward()`` (no retain flag needed) and freed when the output tensor is dropped;
closures never reference their own output, so reference counting alone frees it.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .grad_mode import _state as _grad_mode


def _as_array(data, dtype=None):
    """Backend array for ``data``: floating arrays (and NumPy floating scalars) keep their dtype;
    Python numbers, lists and integer arrays become the default float dtype."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, np.generic):  # a NumPy scalar is a 0-d array: it keeps its dtype
        data = np.asarray(data)
    if type(data) is np.ndarray or backend.device_of(data) == "gpu":
        if dtype is not None and data.dtype != dtype:
            return data.astype(dtype)
        if not backend.is_floating(data.dtype):
            return data.astype(backend.default_dtype())
        return data
    return np.asarray(data, dtype=dtype or backend.default_dtype())


class Tensor:
    """An array that remembers how it was computed, so it can be differentiated.

    ``Tensor(array, requires_grad=False)``: floating arrays keep their dtype, everything else
    becomes the default dtype (float32 unless ``ml.backend.set_default_dtype`` says otherwise).
    """

    __slots__ = ("_backward", "_grad_hooks", "_parents", "data", "grad", "name", "requires_grad")
    __array_ufunc__ = None  # so `ndarray + Tensor` defers to Tensor.__radd__ (and friends)

    def __init__(self, data, requires_grad: bool = False, dtype=None, name: str | None = None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._grad_hooks = None
        self.name = name

    @classmethod
    def _make(cls, data, parents, backward):
        """Result of an op: records the node only when grad mode is on and a parent needs it.

        ``backward(g)`` returns one gradient (or None) per parent: new arrays or views of ``g``,
        never an array it keeps (the engine may store the result as a leaf's ``.grad`` and add
        into it later).
        """
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out.name = None
        out._grad_hooks = None
        if _grad_mode.enabled:
            for p in parents:
                if p.requires_grad:
                    out.requires_grad = True
                    out._parents = parents
                    out._backward = backward
                    return out
        out.requires_grad = False
        out._parents = ()
        out._backward = None
        return out

    # ----------------------------------------------------------------- plain properties
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return self.data.size

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._backward is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a copy from the GPU when on one)."""
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return float(self.data.reshape(-1)[0]) if self.data.size == 1 else self._bad_item()

    def _bad_item(self):
        raise ValueError(f"item() needs a tensor with one element, not shape {self.shape}")

    def detach(self) -> Tensor:
        """The same values, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        self.grad = None

    # ----------------------------------------------------------------- the engine
    def backward(self, grad=None) -> None:
        """Accumulate ∂self/∂leaf into every leaf's ``.grad``.

        ``grad`` defaults to ones for a one-element tensor (a scalar loss); for other shapes pass
        ∂L/∂self explicitly (a vector-Jacobian product).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad "
                               "(no input requires grad, or it was computed under no_grad())")
        xp = backend.xp_of(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element tensor, "
                                   f"not shape {self.shape}; pass grad=∂L/∂self")
            grad = xp.array(1, dtype=self.data.dtype)  # ones_like is 6x slower
            if self.data.ndim:
                grad = grad.reshape(self.data.shape)
        else:
            grad = xp.array(_as_array(grad), dtype=self.dtype).reshape(self.shape)  # a copy

        # Kahn's topological order: a node runs its backward once every child that will send it
        # a gradient has run (``pending`` counts those edges), so each node runs once, with
        # the complete sum of its gradient contributions (the multivariate chain rule).
        pending = _count_children(self)
        grads = {id(self): grad}
        ready = [self]
        seen_memory = set()
        while ready:
            node = ready.pop()
            g = grads.pop(id(node), None)
            backward = node._backward
            if backward is None:  # a leaf: accumulate into .grad
                if g is not None:
                    _accumulate_leaf(node, g, seen_memory)
                continue
            parents = node._parents
            if g is None:  # no gradient reached this node; its inputs still wait for it
                pgs = (None,) * len(parents)
            else:
                pgs = backward(g)
            for parent, pg in zip(parents, pgs):
                if not parent.requires_grad:
                    continue
                key = id(parent)
                if pg is not None:
                    prev = grads.get(key)
                    grads[key] = pg if prev is None else prev + pg
                left = pending[key] - 1
                if left:
                    pending[key] = left
                else:
                    ready.append(parent)

    def register_post_accumulate_grad_hook(self, hook) -> None:
        """Call ``hook(leaf)`` each time ``backward()`` has added this leaf's gradient into
        ``.grad``. In Kahn's order a leaf is reached once, after every op that used it, so the
        hook sees the leaf's final gradient of that pass (what data-parallel overlap waits for).
        """
        if not self.is_leaf:
            raise ValueError("gradient hooks are for leaves (parameters), not op results")
        self._grad_hooks = (*(self._grad_hooks or ()), hook)

    # Operators and methods are attached in ops.py / shape_ops.py, next to their backward rules.


def _count_children(root: Tensor) -> dict:
    """For every node reachable from ``root`` through inputs that require grad: how many
    recorded edges lead into it (an input used twice by one op counts twice)."""
    pending, stack = {}, [root]
    while stack:
        for parent in stack.pop()._parents:
            if parent.requires_grad:
                key = id(parent)
                if key in pending:
                    pending[key] += 1
                else:
                    pending[key] = 1
                    stack.append(parent)
    return pending


def _accumulate_leaf(leaf: Tensor, g, seen_memory: set) -> None:
    """``leaf.grad += g``; the first gradient is stored as is unless it shares memory with
    another leaf's gradient of this pass, or is a read-only (broadcast) view."""
    data = leaf.data
    if g.shape != data.shape:  # a leaf broadcast inside an op that did not reduce
        g = g.reshape(data.shape)
    if g.dtype != data.dtype:
        g = g.astype(data.dtype)
    grad = leaf.grad
    if grad is None:
        root = g if g.base is None else _root(g)
        if id(root) in seen_memory or not _writable(g):
            g = root = g.copy()
        seen_memory.add(id(root))
        leaf.grad = g
    elif grad.shape == g.shape and _writable(grad):
        grad += g  # in place: a grad that is a view of a bucket fills the bucket
    else:
        leaf.grad = grad + g
    if leaf._grad_hooks:
        for hook in leaf._grad_hooks:
            hook(leaf)


def _root(array):
    """The array that owns the memory ``array`` views (to detect two grads sharing memory)."""
    while array.base is not None:
        array = array.base
    return array


def _writable(array) -> bool:
    """May ``array`` be added into in place? NumPy marks broadcast views read-only; CuPy has no
    such flag, so there a stride-0 axis (a broadcast view) says no."""
    if type(array) is np.ndarray:
        return array.flags.writeable
    return all(stride or n <= 1 for stride, n in zip(array.strides, array.shape))


def as_tensor(x) -> Tensor:
    """``x`` itself if it is a Tensor, else a constant Tensor of it."""
    return x if isinstance(x, Tensor) else Tensor(x)
