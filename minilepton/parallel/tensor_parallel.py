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

    def full_state(self) -> dict:
        """The serial layer's parameters, gathered from every rank (a collective)."""
        state = {"weight": _allgather_last(self.comm, self.weight.data, self.out_features)}
        if self.bias is not None:
            state["bias"] = _allgather_last(self.comm, self.bias.data, self.out_features)
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(this rank: {self.weight.shape[1]}), gather_output={self.gather_output}")


class RowParallelLinear(Module):
    """This rank's input features of ``linear``: y = Σ_r x[:, i_r] @ W[i_r, :] + b.

    ``input_is_parallel=True`` (after a column layer): x is already this rank's slice;
    otherwise the full x comes in and is split here (backward: all-gather ∂x).
    """

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

    def full_state(self) -> dict:
        """The serial layer's parameters, gathered from every rank (a collective)."""
        w_t = np.ascontiguousarray(self.weight.data.T)
        state = {"weight": np.ascontiguousarray(
            _allgather_last(self.comm, w_t, self.in_features).T)}
        if self.bias is not None:
            state["bias"] = self.bias.data.copy()
        return state

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


def full_state_dict(model: Sequential) -> dict:
    """The serial model's parameters by name from a ``parallelize_mlp`` model (a collective)."""
    state = {}
    for name, module in model.named_children():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            state.update({f"{name}.{k}": v for k, v in module.full_state().items()})
        else:
            state.update({f"{name}.{k}": p.numpy().copy()
                          for k, p in module.named_parameters()})
    return state
