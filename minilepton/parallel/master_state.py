"""Checkpoints and saved parameters of a run whose optimizer steps masters or ZeRO blocks.

A checkpoint holds whole tensors by name (``state.full_state``), whatever the layout. With mixed
precision the parameters it keeps are the full-precision masters, not their 16-bit copies; with
ZeRO each rank owns one flat block per group, so the masters and every optimizer moment are
all-gathered and cut back into parameter-shaped tensors:

    save:  θ[name] = view of all-gather(θ[block r] of its group)     (and each moment alike)
    load:  θ[block r] = this rank's block of the flattened tensors of the group

So a run saved with ``--zero 2 --precision bf16`` on 4 workers resumes on one process in plain
float32, and the other way round. The loss scaler's state travels beside, as ``"scaler"``.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from .state import full_state, load_full_state


def master_values(strategy):
    """While inside, the model's parameters hold the masters' whole values (a collective with
    ZeRO): what ``--save`` writes and checkpoints keep."""
    master = strategy.master
    if master is None:
        return nullcontext()
    if strategy.zero:
        return strategy.dp.full_values([m.data for m in master.masters])
    return master.swapped_into(strategy.model.parameters())


def optimizer_state_by_parameter(strategy) -> dict:
    """The optimizer's state dict keyed by model-parameter index (a collective with ZeRO)."""
    sd = strategy.optimizer.state_dict()
    if not strategy.zero:
        return sd
    zero, index = strategy.dp, _index(strategy)
    keys = sorted({k for s in sd["state"].values() for k in s if k != "step"})
    state = {}
    for g, group in enumerate(zero.groups):
        if g not in sd["state"]:
            continue
        moments = {k: group.views(zero.comm.allgather(np.ascontiguousarray(sd["state"][g][k])))
                   for k in keys}
        for j, p in enumerate(group.params):
            state[index[id(p)]] = {"step": sd["state"][g]["step"],
                                   **{k: moments[k][j] for k in keys}}
    return {**sd, "state": state}


def load_optimizer_by_parameter(strategy, sd: dict) -> None:
    """Load a state dict keyed by model-parameter index into the optimizer of the masters."""
    if not strategy.zero:
        strategy.optimizer.load_state_dict(sd)
        return
    zero, index = strategy.dp, _index(strategy)
    r, by_group = zero.comm.rank, {}
    for g, group in enumerate(zero.groups):
        got = [sd["state"].get(index[id(p)]) for p in group.params]
        if any(s is None for s in got):
            continue
        keys = [k for k in got[0] if k != "step"]
        dtype = strategy.master.masters[g].dtype
        by_group[g] = {"step": got[0]["step"], **{
            k: group.flatten([s[k] for s in got], dtype)[r * group.block:(r + 1) * group.block]
            for k in keys}}
    strategy.optimizer.load_state_dict({**sd, "state": by_group})


def save_state(strategy) -> dict:
    """``state.full_state`` of the masters and their optimizer (and the loss scaler's state)."""
    with master_values(strategy):
        state = full_state(strategy, optimizer_state_by_parameter(strategy))
    if strategy.master.scaler is not None:
        state["scaler"] = strategy.master.scaler.state_dict()
    return state


def load_state(strategy, state: dict) -> None:
    """The inverse of ``save_state``, from a checkpoint of any layout and technique."""
    master = strategy.master
    with master_values(strategy):  # the parameters hold fresh whole arrays to load into
        load_full_state(strategy, state, lambda sd: load_optimizer_by_parameter(strategy, sd))
        values = [np.array(p.data, copy=True) for p in strategy.model.parameters()]
    if strategy.zero:
        values = strategy.dp.blocks_of(values, master.masters[0].dtype)
    master.load_values(values)
    if strategy.zero:
        strategy.dp.after_update()
    if master.scaler is not None and "scaler" in state:
        master.scaler.load_state_dict(state["scaler"])


def _index(strategy) -> dict:
    return {id(p): i for i, p in enumerate(strategy.model.parameters())}


