"""Checkpoints: a strategy's state (model + optimizer), the epoch, and what resuming needs.

A checkpoint is one ``.npz`` file with no pickled objects: the nested state (dicts, lists,
arrays, numbers, strings) is flattened into numbered arrays plus a JSON tree that says where
each array goes, so loading a checkpoint can never run code. Files are written atomically
(a temporary file in the same directory, then ``os.replace``): a run killed mid-write leaves the
previous checkpoint intact, never a torn one.

Names: ``epoch_0003.npz`` for state every rank holds a copy of (one process, data parallel),
``epoch_0003.rank01.npz`` for state sharded across ranks (tensor / pipeline parallel).
"""

from __future__ import annotations

import json
import os
import re
import tempfile

import numpy as np

from . import backend

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
    path = os.path.join(directory, checkpoint_name(epoch, rank))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
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
