"""Tensor parallelism: one layer's weight matrix split across the ranks of a group.

With y = x @ W + b and W of shape (in, out) split over P ranks (Megatron-LM, §3):

- ``ColumnParallelLinear`` keeps columns W[:, c_r] (output features c_r):
  forward  y_r = copy(x) @ W[:, c_r] + b[c_r]   (each rank computes its slice of y)
  backward ∂x = Σ_r g_r @ W[:, c_r]ᵀ (all-reduce, done by ``copy``), ∂W[:, c_r] = xᵀ g_r.
- ``RowParallelLinear`` keeps rows W[i_r, :] (input features i_r) and takes x[:, i_r]:
  forward  y = reduce(Σ_r x[:, i_r] @ W[i_r, :]) + b   (one all-reduce of partial sums)
  backward ∂x[:, i_r] = g @ W[i_r, :]ᵀ, ∂W[i_r, :] = x[:, i_r]ᵀ g (no communication).

A column layer followed by an elementwise activation and a row layer (``parallelize_mlp``) needs
no communication in between: the block costs one all-reduce forward (in the row layer) and one
backward (in the column layer). Both layers are cut from a serial ``Linear``'s full weight, so
equivalence tests shard exactly the serial numbers. Uneven splits work: ``shard_range``.
"""

from __future__ import annotations

import numpy as np

from ..nn import Linear, Module, Parameter, Sequential
from .mappings import (
    _allgather_last,
    copy_to_group,
    gather_from_group,
    reduce_from_group,
    scatter_to_group,
    shard_range,
)


class ColumnParallelLinear(Module):
    """This rank's output features of ``linear``: y_r = x @ W[:, c_r] + b[c_r].

    ``gather_output=True`` all-gathers the slices into the full y (backward: keep own slice).
    """

    shard_axes = {"weight": 1, "bias": 0}  # W[:, c_r], b[c_r]

    def __init__(self, linear: Linear, comm, gather_output: bool = False):
        super().__init__()
        self.comm, self.gather_output = comm, bool(gather_output)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        cols = shard_range(linear.out_features, comm.world_size, comm.rank)
        self.weight = Parameter(np.ascontiguousarray(linear.weight.data[:, cols]))
        self.bias = (Parameter(linear.bias.data[cols].copy()) if linear.bias is not None
                     else None)

    def forward(self, x):
        y = copy_to_group(x, self.comm) @ self.weight
        if self.bias is not None:
            y = y + self.bias
        return gather_from_group(y, self.comm, self.out_features) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(this rank: {self.weight.shape[1]}), gather_output={self.gather_output}")


class RowParallelLinear(Module):
    """This rank's input features of ``linear``: y = Σ_r x[:, i_r] @ W[i_r, :] + b.

    ``input_is_parallel=True`` (after a column layer): x is already this rank's slice;
    otherwise the full x comes in and is split here (backward: all-gather ∂x).
    """

    shard_axes = {"weight": 0, "bias": None}  # W[i_r, :]; b whole on every rank

    def __init__(self, linear: Linear, comm, input_is_parallel: bool = True):
        super().__init__()
        self.comm, self.input_is_parallel = comm, bool(input_is_parallel)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        rows = shard_range(linear.in_features, comm.world_size, comm.rank)
        self.weight = Parameter(np.ascontiguousarray(linear.weight.data[rows, :]))
        # b is added once, after the reduction; every rank holds (and updates) the same copy
        self.bias = Parameter(linear.bias.data.copy()) if linear.bias is not None else None

    def forward(self, x):
        if not self.input_is_parallel:
            x = scatter_to_group(x, self.comm)
        y = reduce_from_group(x @ self.weight, self.comm)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (this rank: {self.weight.shape[0]}), "
                f"out_features={self.out_features}, input_is_parallel={self.input_is_parallel}")


def parallelize_mlp(model: Sequential, comm) -> Sequential:
    """The ``Sequential`` with its Linear layers sharded over ``comm``, names kept.

    Linear layers alternate column, row, column, …: each column/row pair is one Megatron MLP
    block. A last column layer with no row partner gathers its output. Layers between a column
    layer and its row partner must be elementwise (ReLU, Sigmoid, …).
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"tensor parallelism shards a Sequential, not {type(model).__name__}")
    items = list(model.named_children())
    linear_at = [i for i, (_, m) in enumerate(items) if isinstance(m, Linear)]
    out = {}
    for k, i in enumerate(linear_at):
        layer = items[i][1]
        if k % 2 == 0:
            last = k == len(linear_at) - 1
            out[i] = ColumnParallelLinear(layer, comm, gather_output=last)
        else:
            out[i] = RowParallelLinear(layer, comm, input_is_parallel=True)
    return Sequential({name: out.get(i, m) for i, (name, m) in enumerate(items)})


def shard_axes(model: Sequential) -> dict:
    """Parameter name -> the axis along which this rank holds a ``shard_range`` slice of the
    serial tensor, or None where it holds the whole tensor."""
    axes = {}
    for name, module in model.named_children():
        cut = getattr(module, "shard_axes", {})
        axes.update({f"{name}.{k}": cut.get(k) for k, _ in module.named_parameters()})
    return axes


def gather_shards(model: Sequential, comm, arrays: dict) -> dict:
    """Serial tensors from this rank's slices ``arrays`` (by parameter name, in the model's
    order: weights, or any state shaped like them); a collective over the tensor group."""
    full = {}
    for name, axis in shard_axes(model).items():
        a = np.asarray(arrays[name])
        if axis is None or comm.world_size == 1:
            full[name] = a.copy()
            continue
        last = np.ascontiguousarray(np.moveaxis(a, axis, -1))
        n = _serial_width(comm, a.shape[axis])
        full[name] = np.ascontiguousarray(np.moveaxis(_allgather_last(comm, last, n), -1, axis))
    return full


def take_shards(model: Sequential, comm, full: dict) -> dict:
    """This rank's slices of the serial tensors ``full`` (by name): the inverse of
    ``gather_shards``, for loading a state saved on any layout."""
    out = {}
    for name, axis in shard_axes(model).items():
        a = np.asarray(full[name])
        if axis is not None:
            cut = [slice(None)] * a.ndim
            cut[axis] = shard_range(a.shape[axis], comm.world_size, comm.rank)
            a = a[tuple(cut)]
        out[name] = np.ascontiguousarray(a)
    return out


def _serial_width(comm, mine: int) -> int:
    """The serial length of an axis cut by ``shard_range``, from this rank's piece."""
    return int(comm.allreduce(np.array([mine], dtype=np.int64), op="sum")[0])


def full_state_dict(model: Sequential) -> dict:
    """The serial model's parameters by name from a ``parallelize_mlp`` model (a collective)."""
    comm = next((m.comm for _, m in model.named_children() if hasattr(m, "shard_axes")), None)
    arrays = {name: p.numpy().copy() for name, p in model.named_parameters()}
    return arrays if comm is None else gather_shards(model, comm, arrays)
