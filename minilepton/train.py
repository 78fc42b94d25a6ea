"""The one training loop, shared by the CLI, the notebooks and every parallel run.

``fit(strategy, ...)`` owns epochs, batching, logging, metrics and checkpoints; the strategy owns
the step (see ``minilepton.strategy``). Each epoch every rank walks the same global batches,
``DataLoader.epoch_indices(epoch)`` (a pure function of seed and epoch), keeps the part
``strategy.local_indices`` gives it and calls ``strategy.train_step``. Because the batch order
needs no RNG state, a resumed run replays exactly the computation of an uninterrupted one.

``train(cfg)`` is the single-process run: load the data, build the article's MLP and optimizer,
and ``fit`` with ``SingleProcess``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from . import backend, checkpoint
from .config import TrainConfig
from .strategy import SingleProcess, StepStats

N_FEATURES, N_CLASSES = 784, 10  # 28×28 images, 10 classes (MNIST and Fashion-MNIST)
PROGRESS_MIN_BATCHES = 200       # a progress bar only for epochs longer than this

__all__ = [
    "NonFiniteLossError",
    "TrainConfig",
    "build_model",
    "build_optimizer",
    "fit",
    "format_epoch",
    "load_arrays",
    "train",
]


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite: the run has diverged."""


def build_model(cfg: TrainConfig, n_features: int = N_FEATURES, n_classes: int = N_CLASSES):
    """The MLP ``n_features``-hidden…-``n_classes`` with ReLU, seeded by ``cfg.seed``."""
    from . import nn
    return nn.mlp([n_features, *cfg.hidden, n_classes], seed=cfg.seed, dtype=cfg.dtype)


def build_optimizer(cfg: TrainConfig, params):
    """``Adam(lr)`` or ``SGD(lr, momentum, weight_decay)`` over ``params``."""
    from . import optim
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr)
    return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def load_arrays(cfg: TrainConfig):
    """``(x_train, y_train, x_test, y_test)``: images as (N, 784) floats in [0, 1], int64 labels."""
    from .data import load_dataset, to_float
    (x_train, y_train), (x_test, y_test) = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    return (to_float(x_train, cfg.dtype), np.asarray(y_train, dtype=np.int64),
            to_float(x_test, cfg.dtype), np.asarray(y_test, dtype=np.int64))


def format_epoch(row: dict, epochs: int) -> str:
    """The Keras-like line printed after each epoch."""
    return (f"Epoch {row['epoch']}/{epochs} - loss {row['train_loss']:.4f} - accuracy "
            f"{row['train_accuracy']:.4f} - val_accuracy {row['val_accuracy']:.4f} - "
            f"{row['seconds']:.1f} s - {row['samples_per_second']:.0f} samples/s")


def _checkpoint_rank(strategy):
    """None when every rank holds the whole state (one file), else this rank (one file each)."""
    return None if getattr(strategy, "replicated_state", True) else getattr(strategy, "rank", 0)


def _layout_key(cfg: TrainConfig, strategy) -> dict:
    """Settings a checkpoint must agree with to be resumed (the rest may change).

    A replicated state (one process, data parallel) resumes on any number of workers; a
    sharded one (tensor / pipeline parallel) only on the same rank grid.
    """
    key = {"dataset": cfg.dataset, "hidden": list(cfg.hidden), "optimizer": cfg.optimizer,
           "dtype": cfg.dtype, "batch_size": cfg.batch_size, "seed": cfg.seed}
    if _checkpoint_rank(strategy) is not None:
        key.update(world_size=cfg.world_size, dp=cfg.dp, tp=cfg.tp, pp=cfg.pp)
    return key


def _resume(strategy, cfg: TrainConfig, log) -> tuple[int, list]:
    """Load the newest checkpoint into ``strategy``; return (epochs done, their metric rows).

    Sharded state resumes from the newest epoch that *every* rank saved, so a job stopped
    between two ranks' writes still restarts all ranks at the same epoch.
    """
    rank = _checkpoint_rank(strategy)
    path = checkpoint.latest_checkpoint(cfg.checkpoint_dir, rank)
    if rank is not None:
        common = set.intersection(*(set(checkpoint.list_checkpoints(cfg.checkpoint_dir, r))
                                    for r in range(cfg.world_size)))
        name = checkpoint.checkpoint_name(max(common), rank) if common else None
        path = os.path.join(cfg.checkpoint_dir, name) if name else None
    if path is None:
        log(f"no checkpoint in {cfg.checkpoint_dir}; starting from epoch 1")
        return 0, []
    epoch, state, meta = checkpoint.load_checkpoint(path)
    expected = _layout_key(cfg, strategy)
    for key, value in meta.get("layout", {}).items():
        if expected.get(key) != value:
            raise ValueError(f"checkpoint {path} was written with {key}={value!r}, "
                             f"this run has {key}={expected.get(key)!r}")
    if epoch > cfg.epochs:
        raise ValueError(f"checkpoint {path} is at epoch {epoch}, past --epochs {cfg.epochs}")
    strategy.load_state_dict(state)
    log(f"resumed from {path} (epoch {epoch}/{cfg.epochs})")
    return epoch, meta.get("history", [])


def _progress(strategy, n_batches: int, desc: str):
    """A tqdm bar on the main rank when stderr is a terminal and the epoch is long, else None."""
    if not (strategy.is_main and n_batches >= PROGRESS_MIN_BATCHES and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=n_batches, desc=desc, unit="batch", leave=False, file=sys.stderr)


def _train_epoch(strategy, x, y, batches, bar, epoch: int) -> StepStats:
    """One pass over ``batches``; stops with NonFiniteLossError the moment the loss diverges."""
    total = StepStats(0.0, 0, 0)
    on_gpu = backend.xp_of(x) is not np
    for step, idx in enumerate(batches):
        local = strategy.local_indices(idx)
        if on_gpu:
            local = backend.to_device(local, "gpu")
        stats = strategy.train_step(x[local], y[local], global_batch_size=len(idx))
        if not math.isfinite(stats.loss_sum):
            raise NonFiniteLossError(
                f"the training loss became {stats.loss_sum} at epoch {epoch}, step {step + 1}; "
                "lower --lr or check the data")
        total = total + stats
        if bar is not None:
            bar.update(1)
            if step % 50 == 0 and stats.count:
                bar.set_postfix(loss=f"{stats.loss_sum / stats.count:.4f}", refresh=False)
    return total


def fit(strategy, x_train, y_train, x_test, y_test, cfg: TrainConfig, log=None) -> dict:
    """Train for ``cfg.epochs`` epochs with ``strategy``; return the metrics dict.

    Every rank calls this with the same arguments. The main rank prints one line per epoch and
    writes ``cfg.metrics_json`` and ``cfg.save`` (``.npz`` of ``strategy.full_parameters()``);
    with ``cfg.checkpoint_dir`` a checkpoint is written after every epoch, and ``cfg.resume``
    continues from the newest one. ``log`` (default: print to stdout on the main rank) gets
    each line.
    """
    from .data import DataLoader
    if log is None:
        log = print if strategy.is_main and cfg.verbose else (lambda line: None)
    loader = DataLoader(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    start, history = _resume(strategy, cfg, log) if cfg.resume else (0, [])
    for epoch in range(start + 1, cfg.epochs + 1):
        batches = loader.epoch_indices(epoch - 1)
        bar = _progress(strategy, len(batches), f"Epoch {epoch}/{cfg.epochs}")
        t0 = time.perf_counter()
        try:  # overflow shows up as a non-finite loss, reported once, not as NumPy warnings
            with np.errstate(all="warn" if cfg.debug else "ignore"):
                local = _train_epoch(strategy, x_train, y_train, batches, bar, epoch)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        stats = strategy.reduce_stats(local)
        val = strategy.evaluate(x_test, y_test)
        history.append({
            "epoch": epoch,
            "train_loss": stats.loss_sum / max(stats.count, 1),
            "train_accuracy": stats.correct / max(stats.count, 1),
            "val_loss": val.loss_sum / max(val.count, 1),
            "val_accuracy": val.correct / max(val.count, 1),
            "seconds": seconds,
            "eval_seconds": time.perf_counter() - t0 - seconds,
            "samples_per_second": stats.count / seconds if seconds > 0 else 0.0,
        })
        log(format_epoch(history[-1], cfg.epochs))
        if cfg.checkpoint_dir:
            rank = _checkpoint_rank(strategy)
            if rank is not None or strategy.is_main:
                meta = {"layout": _layout_key(cfg, strategy), "history": history}
                checkpoint.save_checkpoint(cfg.checkpoint_dir, epoch, strategy.state_dict(), meta,
                                           rank=rank)
    if start >= cfg.epochs:  # resumed a finished run: nothing trained, evaluate once
        val = strategy.evaluate(x_test, y_test)
    metrics = {
        "test_accuracy": val.correct / max(val.count, 1),
        "test_loss": val.loss_sum / max(val.count, 1),
        "world_size": cfg.world_size,
        "epochs": history,
        "config": cfg.as_dict(),
    }
    _write_outputs(strategy, cfg, metrics)
    return metrics


def _write_outputs(strategy, cfg: TrainConfig, metrics: dict) -> None:
    """``--save`` (final parameters, .npz) and ``--metrics-json``, from the main rank."""
    params = strategy.full_parameters() if cfg.save else None  # may be collective: every rank
    if not strategy.is_main:
        return
    if cfg.save:
        _atomic_write(cfg.save, lambda f: np.savez(f, **params))
    if cfg.metrics_json:
        _atomic_write(cfg.metrics_json,
                      lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode()))


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def train(cfg: TrainConfig, arrays=None, log=None) -> dict:
    """The single-process run of ``cfg`` (on ``cfg.device``); returns ``fit``'s metrics.

    ``arrays`` (x_train, y_train, x_test, y_test) skips loading the dataset named by ``cfg``.
    """
    device = backend.resolve_device(cfg.device)
    if cfg.blas_threads is not None:  # this whole process, from now on
        from .cluster.blas import limit_threads
        limit_threads(cfg.blas_threads)
    x_train, y_train, x_test, y_test = arrays if arrays is not None else load_arrays(cfg)
    model = build_model(cfg, n_features=x_train.shape[1], n_classes=N_CLASSES)
    if device == "gpu":
        model.to("gpu")
        x_train, y_train, x_test, y_test = (backend.to_device(a, "gpu")
                                            for a in (x_train, y_train, x_test, y_test))
    strategy = SingleProcess(model, build_optimizer(cfg, model.parameters()))
    return fit(strategy, x_train, y_train, x_test, y_test, cfg, log=log)
