"""The one training loop, shared by the CLI, the Python API, the notebooks and every layout.

``fit(strategy, x_train, y_train, x_test, y_test, cfg, hooks)`` owns epochs and batches; the
strategy owns the step (``minilepton.parallel.strategy``); hooks (``engine.hooks``) do the rest
at fixed points: resume, print, checkpoint, add figures to the metrics, write files. Each epoch
every rank walks the same global batches, ``DataLoader.epoch_indices(epoch)`` (a pure function
of seed and epoch), keeps the part ``strategy.local_indices`` gives it and calls
``strategy.train_step``. Because the batch order needs no RNG state, a resumed run replays
exactly the computation of an uninterrupted one.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from .. import backend
from ..data import DataLoader
from ..parallel.stats import StepStats
from .config import TrainConfig
from .hooks import Progress, default_hooks, format_epoch  # noqa: F401 - format_epoch: API

PROGRESS_MIN_BATCHES = 200  # a progress bar only for epochs longer than this


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run has diverged (a failure during the
    run, exit status 1, in one process and in workers alike)."""


def _progress(strategy, n_batches: int, desc: str):
    """A tqdm bar on the main rank when stderr is a terminal and the epoch is long, else None."""
    if not (strategy.is_main and n_batches >= PROGRESS_MIN_BATCHES and sys.stderr.isatty()):
        return None
    from tqdm import tqdm
    return tqdm(total=n_batches, desc=desc, unit="batch", leave=False, file=sys.stderr)


def _train_epoch(strategy, x, y, batches, bar, progress, hooks) -> StepStats:
    """``batches[progress.step:]``; stops with NonFiniteLossError the moment the loss diverges.
    After each step ``progress`` says where the run stands and the hooks see it."""
    total = progress.partial if progress.partial is not None else StepStats(0.0, 0, 0)
    on_gpu = backend.xp_of(x) is not np
    epoch = progress.epoch + 1
    for step in range(progress.step, len(batches)):
        idx = batches[step]
        local = strategy.local_indices(idx)
        if on_gpu:
            local = backend.to_device(local, "gpu")
        stats = strategy.train_step(x[local], y[local], global_batch_size=len(idx))
        if not math.isfinite(stats.loss_sum):
            raise NonFiniteLossError(
                f"the training loss became {stats.loss_sum} at epoch {epoch}, step {step + 1}; "
                "lower --lr or check the data")
        total = total + stats
        progress.step, progress.partial = step + 1, total
        progress.global_step += 1
        for hook in hooks:
            hook.on_step_end(strategy, progress)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0 and stats.count:
                bar.set_postfix(loss=f"{stats.loss_sum / stats.count:.4f}", refresh=False)
    return total


def _mean(stats: StepStats) -> tuple[float, float]:
    return stats.loss_sum / max(stats.count, 1), stats.correct / max(stats.count, 1)


def fit(strategy, x_train, y_train, x_test, y_test, cfg: TrainConfig, hooks=None,
        log=None) -> dict:
    """Train for ``cfg.epochs`` epochs with ``strategy``; return the metrics dict.

    Every rank calls this with the same arguments. ``hooks`` default to
    ``default_hooks(cfg, log)``: resume from ``cfg.checkpoint_dir`` when ``cfg.resume``, print one
    line per epoch on the main rank (through ``log``, default ``print``), checkpoint after every
    epoch, and write ``cfg.save`` and ``cfg.metrics_json`` at the end.
    """
    hooks = default_hooks(cfg, log) if hooks is None else hooks
    loader = DataLoader(x_train, y_train, cfg.batch_size, shuffle=True, seed=cfg.seed)
    progress = Progress(steps_per_epoch=len(loader.epoch_indices(0)))
    for hook in hooks:
        hook.on_start(strategy, progress)
    start = progress.epoch
    progress.global_step = start * progress.steps_per_epoch + progress.step
    for epoch in range(start + 1, cfg.epochs + 1):
        batches = loader.epoch_indices(epoch - 1)
        bar = _progress(strategy, len(batches) - progress.step, f"Epoch {epoch}/{cfg.epochs}")
        t0 = time.perf_counter()
        try:  # overflow shows up as a non-finite loss, reported once, not as NumPy warnings
            with np.errstate(all="warn" if cfg.debug else "ignore"):
                local = _train_epoch(strategy, x_train, y_train, batches, bar, progress, hooks)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - t0
        stats = strategy.reduce_stats(local)
        val = strategy.evaluate(x_test, y_test)
        (train_loss, train_acc), (val_loss, val_acc) = _mean(stats), _mean(val)
        progress.history.append({
            "epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
            "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds,
            "eval_seconds": time.perf_counter() - t0 - seconds,
            "samples_per_second": stats.count / seconds if seconds > 0 else 0.0})
        progress.epoch, progress.step, progress.partial = epoch, 0, None
        for hook in hooks:
            hook.on_epoch_end(strategy, progress.history)
    history = progress.history
    if start >= cfg.epochs:  # resumed a finished run: nothing trained, evaluate once
        val = strategy.evaluate(x_test, y_test)
    test_loss, test_acc = _mean(val)
    metrics = {"test_accuracy": test_acc, "test_loss": test_loss,
               "world_size": cfg.world_size, "epochs": history,
               "config": cfg.as_dict()}
    for hook in hooks:
        hook.on_end(strategy, metrics)
    return metrics
