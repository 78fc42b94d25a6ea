"""The Tensor and the reverse-mode engine.

A Tensor wraps one backend array (NumPy or CuPy). An operation on tensors that require
gradients records a node: its parent tensors and a ``backward`` closure that maps the gradient
of the output, ∂L/∂out, to the gradients of the parents, (∂L/∂a, ∂L/∂b, ...). ``loss.backward()``
sorts the recorded graph topologically (an explicit stack, no recursion) and walks it from the
loss to the leaves, summing the contributions that reach each node (the multivariate chain rule).

Gradients of leaves accumulate: ``.grad`` holds the sum over every ``backward()`` call since it
was last cleared (``optimizer.zero_grad()`` or ``t.grad = None``), as in PyTorch. The graph is
kept after ``backward()`` (no retain flag needed) and freed when the output tensor is dropped;
closures never reference their own output, so reference counting alone frees it.
"""

from __future__ import annotations

import numpy as np

from .. import backend
from .grad_mode import is_grad_enabled


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
        if data.dtype.kind != "f":
            return data.astype(backend.default_dtype())
        return data
    return np.asarray(data, dtype=dtype or backend.default_dtype())


def _root_id(array) -> int:
    """Identity of the memory block an array views (to detect two grads sharing memory)."""
    while getattr(array, "base", None) is not None:
        array = array.base
    return id(array)


class Tensor:
    """An array that remembers how it was computed, so it can be differentiated.

    ``Tensor(array, requires_grad=False)``: floating arrays keep their dtype, everything else
    becomes the default dtype (float32 unless ``ml.backend.set_default_dtype`` says otherwise).
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "name")
    __array_ufunc__ = None  # so `ndarray + Tensor` defers to Tensor.__radd__ (and friends)

    def __init__(self, data, requires_grad: bool = False, dtype=None, name: str | None = None):
        self.data = _as_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self.name = name

    @classmethod
    def _make(cls, data, parents, backward):
        """Result of an op: records the node only when grad mode is on and a parent needs it."""
        out = cls.__new__(cls)
        out.data = data
        out.grad = None
        out.name = None
        if is_grad_enabled() and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._parents = parents
            out._backward = backward
        else:
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

    def detach(self) -> "Tensor":
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
            grad = xp.ones_like(self.data)
        else:
            grad = xp.array(_as_array(grad), dtype=self.dtype).reshape(self.shape)  # a copy

        order = _topological_order(self)
        grads = {id(self): grad}
        seen_memory = set()
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf: accumulate into .grad
                _accumulate_leaf(node, g, seen_memory)
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if pg is None or not parent.requires_grad:
                    continue
                key = id(parent)
                prev = grads.get(key)
                grads[key] = pg if prev is None else prev + pg

    # Operators and methods are attached in ops.py / shape_ops.py, next to their backward rules.


def _topological_order(root: Tensor) -> list:
    """Nodes reachable from ``root`` that require grad, every parent before its children."""
    order, visited, stack = [], set(), [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in visited:
                stack.append((parent, False))
    return order


def _accumulate_leaf(leaf: Tensor, g, seen_memory: set) -> None:
    """``leaf.grad += g``; the first gradient is stored as is unless it shares memory."""
    if g.shape != leaf.data.shape:  # a leaf broadcast inside an op that did not reduce
        g = g.reshape(leaf.data.shape)
    if g.dtype != leaf.data.dtype:
        g = g.astype(leaf.data.dtype)
    if leaf.grad is None:
        root = _root_id(g)
        if root in seen_memory or not _writable(g):
            g = g.copy()
            root = id(g)
        seen_memory.add(root)
        leaf.grad = g
    elif leaf.grad.shape == g.shape and _writable(leaf.grad):
        leaf.grad += g  # in place: a grad that is a view of a bucket fills the bucket
    else:
        leaf.grad = leaf.grad + g


def _writable(array) -> bool:
    """May ``array`` be added into in place? Not a read-only view (NumPy's broadcast_to) and
    no stride-0 axis (a broadcast view, which CuPy does not mark read-only)."""
    if not getattr(array.flags, "writeable", True):
        return False
    return all(stride or n <= 1 for stride, n in zip(array.strides, array.shape))


def as_tensor(x) -> Tensor:
    """``x`` itself if it is a Tensor, else a constant Tensor of it."""
    return x if isinstance(x, Tensor) else Tensor(x)
