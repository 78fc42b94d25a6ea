"""Checkpoints: a strategy's state (model + optimizer), the epoch, and what resuming needs.

A checkpoint is one ``.npz`` file with no pickled objects: the nested state (dicts, lists,
arrays, numbers, strings) is flattened into numbered arrays plus a JSON tree that says where
each array goes, so loading a checkpoint can never run code. Files are written atomically
(``minilepton.files.atomic_write``: a fresh temporary file in the same directory, then
``os.replace``): a run killed mid-write leaves the previous checkpoint intact, never a torn one.

Names: ``epoch_0003.npz`` for state every rank holds a copy of (one process, data parallel),
``epoch_0003.rank01.npz`` for state sharded across ranks (tensor / pipeline parallel).
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from .. import backend
from ..files import atomic_write

_NAME = re.compile(r"^epoch_(\d{4,})(?:\.rank(\d+))?\.npz$")
_TREE_KEY = "__tree__"


def _flatten(obj, arrays: list):
    """A JSON-able tree where each array is replaced by {"@": index into ``arrays``}."""
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError("checkpoint dict keys must be strings or integers")
        return {"d": [[k, _flatten(v, arrays)] for k, v in obj.items()]}  # keeps int keys
    if isinstance(obj, (list, tuple)):
        return {"l" if isinstance(obj, list) else "t": [_flatten(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, str)):
        return {"v": obj}
    if isinstance(obj, (int, np.integer)):
        return {"i": int(obj)}
    if isinstance(obj, (float, np.floating)):
        return {"f": float(obj).hex()}  # hex keeps every bit of the float
    arrays.append(backend.to_numpy(obj))
    return {"@": len(arrays) - 1}


def _unflatten(node, arrays):
    (kind, value), = node.items()
    if kind == "d":
        return {k: _unflatten(v, arrays) for k, v in value}
    if kind in "lt":
        items = [_unflatten(v, arrays) for v in value]
        return items if kind == "l" else tuple(items)
    if kind == "i":
        return int(value)
    if kind == "f":
        return float.fromhex(value)
    if kind == "@":
        return arrays[f"a{value}"]
    return value


def checkpoint_name(epoch: int, rank: int | None = None) -> str:
    """``epoch_0003.npz``, or ``epoch_0003.rank01.npz`` for one rank's shard."""
    return f"epoch_{epoch:04d}.npz" if rank is None else f"epoch_{epoch:04d}.rank{rank:02d}.npz"


def save_checkpoint(directory, epoch: int, state: dict, meta: dict,
                    rank: int | None = None, keep: int = 2) -> str:
    """Write ``state`` (arrays and numbers) and ``meta`` (JSON-able) atomically; return the path.

    Keeps the newest ``keep`` checkpoints of this rank and deletes older ones.
    """
    os.makedirs(directory, exist_ok=True)
    arrays: list = []
    tree = {"state": _flatten(state, arrays), "meta": meta, "epoch": int(epoch)}
    payload = {f"a{i}": a for i, a in enumerate(arrays)}
    payload[_TREE_KEY] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    path = atomic_write(os.path.join(directory, checkpoint_name(epoch, rank)),
                        lambda f: np.savez(f, **payload))
    for old_epoch in sorted(list_checkpoints(directory, rank))[:-keep] if keep else []:
        os.unlink(os.path.join(directory, checkpoint_name(old_epoch, rank)))
    return path


def list_checkpoints(directory, rank: int | None = None) -> list[int]:
    """Epochs that have a checkpoint for ``rank`` (None: the replicated files) in ``directory``."""
    if not os.path.isdir(directory):
        return []
    epochs = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m and (m.group(2) is None if rank is None else m.group(2) is not None
                  and int(m.group(2)) == rank):
            epochs.append(int(m.group(1)))
    return sorted(epochs)


def latest_checkpoint(directory, rank: int | None = None) -> str | None:
    """Path of the newest checkpoint of ``rank`` in ``directory``, or None."""
    epochs = list_checkpoints(directory, rank)
    return os.path.join(directory, checkpoint_name(epochs[-1], rank)) if epochs else None


def load_checkpoint(path) -> tuple[int, dict, dict]:
    """``(epoch, state, meta)`` from a file written by ``save_checkpoint``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tree = json.loads(arrays.pop(_TREE_KEY).tobytes().decode())
        return tree["epoch"], _unflatten(tree["state"], arrays), tree["meta"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None


# ---- what the training loop saves and resumes
def _checkpoint_rank(strategy):
    """None when every rank holds the whole state (one file), else this rank (one file each)."""
    return None if strategy.replicated_state else strategy.rank


def layout_key(cfg, strategy) -> dict:
    """Settings a checkpoint must agree with to be resumed (the rest may change).

    A replicated state (one process, data parallel) resumes on any number of workers; a
    sharded one (tensor / pipeline parallel) only on the same rank grid.
    """
    key = {"dataset": cfg.dataset, "hidden": list(cfg.hidden), "optimizer": cfg.optimizer,
           "dtype": cfg.dtype, "batch_size": cfg.batch_size, "seed": cfg.seed}
    if _checkpoint_rank(strategy) is not None:
        key.update(world_size=cfg.world_size, dp=cfg.dp, tp=cfg.tp, pp=cfg.pp)
    return key


def save_epoch(strategy, cfg, history: list) -> None:
    """The checkpoint of the epoch just finished (main rank, or every rank for a sharded state)."""
    rank = _checkpoint_rank(strategy)
    if rank is not None or strategy.is_main:
        meta = {"layout": layout_key(cfg, strategy), "history": history}
        save_checkpoint(cfg.checkpoint_dir, history[-1]["epoch"], strategy.state_dict(), meta,
                        rank=rank)


def resume(strategy, cfg, log) -> tuple[int, list]:
    """Load the newest checkpoint into ``strategy``; return (epochs done, their metric rows).

    Sharded state resumes from the newest epoch that *every* rank saved, so a job stopped
    between two ranks' writes still restarts all ranks at the same epoch.
    """
    rank = _checkpoint_rank(strategy)
    path = latest_checkpoint(cfg.checkpoint_dir, rank)
    if rank is not None:
        common = set.intersection(*(set(list_checkpoints(cfg.checkpoint_dir, r))
                                    for r in range(cfg.world_size)))
        path = (os.path.join(cfg.checkpoint_dir, checkpoint_name(max(common), rank))
                if common else None)
    if path is None:
        log(f"no checkpoint in {cfg.checkpoint_dir}; starting from epoch 1")
        return 0, []
    epoch, state, meta = load_checkpoint(path)
    expected = layout_key(cfg, strategy)
    for key, value in meta.get("layout", {}).items():
        if expected.get(key) != value:
            raise ValueError(f"checkpoint {path} was written with {key}={value!r}, "
                             f"this run has {key}={expected.get(key)!r}")
    if epoch > cfg.epochs:
        raise ValueError(f"checkpoint {path} is at epoch {epoch}, past --epochs {cfg.epochs}")
    strategy.load_state_dict(state)
    log(f"resumed from {path} (epoch {epoch}/{cfg.epochs})")
    return epoch, meta.get("history", [])
