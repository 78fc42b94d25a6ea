"""A strategy's state as whole tensors by name: what a checkpoint holds, loadable on any layout.

Each rank holds pieces: tensor parallelism cuts a tensor along one axis (``shard_range``),
pipeline parallelism gives each tensor to one stage, data parallelism repeats everything. The
*full state* undoes that: every parameter, and every optimizer moment shaped like one, as the
serial model would hold it, keyed by the serial parameter name:

    gather:  full[name] = concat_r piece_r[name] along its axis   (tensor group, all-gather)
             then broadcast from the stage that owns ``name``      (pipeline group)
    load:    piece[name] = full[name][shard_range(...)] on this rank's axis

So a run saved on one layout resumes on any other (one process, dp, tp, pp, hybrids), with the
optimizer state re-sharded the same way as the weights.
"""

from __future__ import annotations

import numpy as np

from .tensor_parallel import gather_shards, take_shards


def gather_full(strategy, local: dict) -> dict:
    """Serial tensors by name on every rank from this rank's pieces ``local`` (a collective)."""
    mesh = strategy.mesh
    if mesh.tp > 1:
        mine = gather_shards(strategy.model, mesh.tp_comm, local)
    else:
        mine = {name: np.array(a, copy=True) for name, a in local.items()}
    if mesh.pp == 1:
        return mine
    out = {}
    for name, (shape, dtype) in strategy.shapes.items():
        array = mine[name] if name in mine else np.empty(shape, dtype)
        out[name] = mesh.pp_comm.broadcast(np.ascontiguousarray(array), root=strategy.owner[name])
    return out


def full_state(strategy, optimizer_state: dict | None = None) -> dict:
    """``{"model": {name: array}, "optimizer": {"type", "hyperparameters", "state": {name:
    {"step": int, moment: array}}}}`` for the serial model; every rank gets it (a collective).
    ``optimizer_state``: the optimizer's state dict by parameter index, when the optimizer does
    not step the model's parameters themselves (ZeRO blocks, mixed-precision masters)."""
    names = [name for name, _ in strategy.model.named_parameters()]
    opt = strategy.optimizer.state_dict() if optimizer_state is None else optimizer_state
    model = gather_full(strategy, {n: p.numpy() for n, p in strategy.model.named_parameters()})
    local = {names[i]: s for i, s in opt["state"].items()}
    keys = sorted({k for s in local.values() for k in s if k != "step"})
    if any(set(s) - {"step"} != set(keys) for s in local.values()) or (
            keys and len(local) != len(names)):
        raise ValueError("optimizer state covers only some parameters; it cannot be gathered")
    moments = {k: gather_full(strategy, {n: local[n][k] for n in names}) for k in keys}
    steps = np.array([local.get(n, {}).get("step", 0) for n in strategy.shapes], dtype=np.int64)
    if strategy.mesh.pp > 1:  # each stage knows its own parameters' step counts
        strategy.mesh.pp_comm.allreduce(steps, op="max")
    state = {name: {"step": int(step), **{k: moments[k][name] for k in keys}}
             for name, step in zip(strategy.shapes, steps) if step}
    return {"model": model, "optimizer": {"type": opt["type"],
                                          "hyperparameters": opt["hyperparameters"],
                                          "state": state}}


def load_full_state(strategy, state: dict, load_optimizer=None) -> None:
    """This rank's pieces of a full state (from ``full_state`` on any layout), loaded in place;
    ``load_optimizer(state_dict by parameter index)`` stands in for the optimizer's own."""
    expected = {name: tuple(shape) for name, (shape, _) in strategy.shapes.items()}
    saved = {name: tuple(np.shape(a)) for name, a in state["model"].items()}
    if saved != expected:
        differ = sorted(set(saved.items()) ^ set(expected.items()))[:3]
        raise ValueError(f"the saved state is of another model (names or shapes differ: {differ})")
    names = [name for name, _ in strategy.model.named_parameters()]

    def mine(full: dict) -> dict:
        if strategy.mesh.tp > 1:
            return take_shards(strategy.model, strategy.mesh.tp_comm, full)
        return {name: full[name] for name in names}
    strategy.model.load_state_dict(mine(state["model"]))
    saved_opt = state["optimizer"]
    per_name = saved_opt["state"]
    keys = sorted({k for s in per_name.values() for k in s if k != "step"})
    pieces = {k: mine({n: per_name[n][k] for n in strategy.shapes}) for k in keys} if keys else {}
    local = {i: {"step": per_name[n]["step"], **{k: pieces[k][n] for k in keys}}
             for i, n in enumerate(names) if n in per_name}
    (load_optimizer or strategy.optimizer.load_state_dict)(
        {"type": saved_opt["type"], "hyperparameters": saved_opt["hyperparameters"],
         "state": local})
