"""Checkpoints: a strategy's state (model + optimizer), the epoch, and what resuming needs.

A checkpoint is one ``.npz`` file with no pickled objects: the nested state (dicts, lists,
arrays, numbers, strings) is flattened into numbered arrays plus a JSON tree that says where
each array goes, so loading a checkpoint can never run code. Files are written atomically
(``minilepton.files.atomic_write``: a fresh temporary file in the same directory, then
``os.replace``): a run killed mid-write leaves the previous checkpoint intact, never a torn one.

The state is the strategy's *full* state (``parallel.state``): whole tensors by parameter name,
so a checkpoint written on one layout resumes on any other. Names say where the run stood:
``epoch_0003.npz`` after 3 epochs, ``epoch_0003.step_000050.npz`` 50 steps into the 4th. A
damaged newest file is reported by name and the one before it is used; the temporary files of
a save that was killed are removed by the next save.
"""

from __future__ import annotations

import json
import os
import re
import stat
import zipfile

import numpy as np

from .. import backend
from ..files import atomic_write

_NAME = re.compile(r"^epoch_(\d{4,})(?:\.step_(\d{6,}))?\.npz$")
_LEFTOVER = re.compile(r"^\.epoch_\d{4,}(?:\.step_\d{6,})?\.npz\.tmp-")
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


def checkpoint_name(epoch: int, step: int = 0) -> str:
    """``epoch_0003.npz`` (3 epochs done) or ``epoch_0003.step_000050.npz`` (and 50 steps)."""
    return f"epoch_{epoch:04d}.npz" if not step else f"epoch_{epoch:04d}.step_{step:06d}.npz"


def save_checkpoint(directory, epoch: int, state: dict, meta: dict, step: int = 0,
                    keep: int = 2) -> str:
    """Write ``state`` (arrays and numbers) and ``meta`` (JSON-able) atomically; return the path.

    Keeps the newest ``keep`` checkpoints and deletes older ones and leftover temporary files.
    """
    os.makedirs(directory, exist_ok=True)
    _remove_leftovers(directory)
    arrays: list = []
    tree = {"state": _flatten(state, arrays), "meta": meta, "epoch": int(epoch),
            "step": int(step)}
    payload = {f"a{i}": a for i, a in enumerate(arrays)}
    payload[_TREE_KEY] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    path = atomic_write(os.path.join(directory, checkpoint_name(epoch, step)),
                        lambda f: np.savez(f, **payload))
    for old in list_checkpoints(directory)[:-keep] if keep else []:
        os.unlink(os.path.join(directory, checkpoint_name(*old)))
    return path


def _remove_leftovers(directory) -> None:
    """Temporary files of an earlier save that was killed: ours, regular, this user's."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _LEFTOVER.match(name):
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                os.unlink(path)


def list_checkpoints(directory) -> list[tuple[int, int]]:
    """``(epoch, step)`` of every checkpoint in ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    found = [_NAME.match(name) for name in os.listdir(directory)]
    return sorted((int(m.group(1)), int(m.group(2) or 0)) for m in found if m)


def latest_checkpoint(directory) -> str | None:
    """Path of the newest checkpoint in ``directory``, or None."""
    found = list_checkpoints(directory)
    return os.path.join(directory, checkpoint_name(*found[-1])) if found else None


def load_checkpoint(path) -> tuple[int, dict, dict]:
    """``(epoch, state, meta)`` from a file written by ``save_checkpoint`` (``meta["step"]``
    holds the step); ``ValueError`` naming the file if it is damaged or not a checkpoint."""
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"PK\x03\x04":
                raise ValueError("not a checkpoint (a checkpoint is a .npz, a zip file)")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        tree = json.loads(arrays.pop(_TREE_KEY).tobytes().decode())
        meta = dict(tree["meta"], step=tree.get("step", 0))
        return tree["epoch"], _unflatten(tree["state"], arrays), meta
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None


# ---- what the training loop saves and resumes
def identity_key(cfg) -> dict:
    """What a checkpoint must agree with to be resumed: the model, its optimizer and the batch
    order. The layout (workers, dp, tp, pp) may change: the state is whole tensors."""
    return {"dataset": cfg.dataset, "hidden": list(cfg.hidden), "optimizer": cfg.optimizer,
            "dtype": cfg.dtype, "batch_size": cfg.batch_size, "seed": cfg.seed}


def save_position(strategy, cfg, epoch: int, step: int, history: list, partial) -> None:
    """Checkpoint after ``epoch`` epochs and ``step`` steps (a collective; the main rank
    writes). ``partial``: the running stats of the epoch in progress, summed over ranks."""
    state = strategy.state_dict()
    if strategy.is_main:
        meta = {"identity": identity_key(cfg), "history": history,
                "partial": None if partial is None else
                [partial.loss_sum, partial.correct, partial.count]}
        save_checkpoint(cfg.checkpoint_dir, epoch, state, meta, step=step)


def resume(strategy, cfg, log) -> tuple[int, int, list, list | None]:
    """Load the newest readable checkpoint into ``strategy``; return (epochs done, steps done in
    the next epoch, the finished epochs' rows, the summed stats of the epoch in progress)."""
    found = list_checkpoints(cfg.checkpoint_dir)
    if not found:
        log(f"no checkpoint in {cfg.checkpoint_dir}; starting from epoch 1")
        return 0, 0, [], None
    for position in reversed(found):
        path = os.path.join(cfg.checkpoint_dir, checkpoint_name(*position))
        try:
            epoch, state, meta = load_checkpoint(path)
            break
        except ValueError as exc:
            log(f"{exc}; trying the one before")
    else:
        raise ValueError(f"no readable checkpoint in {cfg.checkpoint_dir} "
                         f"({len(found)} damaged)")
    expected = identity_key(cfg)
    for key, value in meta.get("identity", {}).items():
        if expected.get(key) != value:
            raise ValueError(f"checkpoint {path} was written with {key}={value!r}, "
                             f"this run has {key}={expected.get(key)!r}")
    if epoch > cfg.epochs or (epoch == cfg.epochs and meta["step"]):
        raise ValueError(f"checkpoint {path} is past --epochs {cfg.epochs}")
    strategy.load_state_dict(state)
    where = f"epoch {epoch}/{cfg.epochs}" + (f", step {meta['step']}" if meta["step"] else "")
    log(f"resumed from {path} ({where})")
    return epoch, meta["step"], meta.get("history", []), meta.get("partial")
