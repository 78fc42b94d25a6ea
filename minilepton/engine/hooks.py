"""What the training loop does around the steps, as hooks called at three fixed points.

``on_start(strategy, start, history)`` may resume (returns the epoch to start after and the
rows so far), ``on_epoch_end(strategy, history)`` sees each finished epoch's row,
``on_end(strategy, metrics)`` may add to the metrics or write files. Every rank calls every
hook (some are collectives); hooks that print or write act on the main rank only.
``default_hooks(cfg)`` lists the ones a ``TrainConfig`` asks for, in the order they run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..parallel.memory import KINDS, format_table, human_bytes
from ..parallel.stats import StepStats
from ..cluster.faults import maybe_fire, parse_fault
from . import checkpoint
from .heartbeats import heartbeats
from .config import TrainConfig
from ..files import atomic_write, atomic_write_text
from .trace import gather_events, write_chrome_trace


@dataclass
class Progress:
    """Where the run stands: ``epoch`` epochs done, then ``step`` steps of the next one;
    ``partial`` is this rank's running stats of that epoch; ``history`` the finished rows."""

    steps_per_epoch: int
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    partial: StepStats | None = None
    history: list = field(default_factory=list)


class Hook:
    """Does nothing at every point; subclasses override what they need."""

    def on_start(self, strategy, progress: Progress) -> None:
        """May move ``progress`` (a resume)."""

    def on_step_end(self, strategy, progress: Progress) -> None:
        pass

    def on_epoch_end(self, strategy, history: list) -> None:
        pass

    def on_end(self, strategy, metrics: dict) -> None:
        pass


def format_epoch(row: dict, epochs: int) -> str:
    """The Keras-like line printed after each epoch."""
    return (f"Epoch {row['epoch']}/{epochs} - loss {row['train_loss']:.4f} - accuracy "
            f"{row['train_accuracy']:.4f} - val_accuracy {row['val_accuracy']:.4f} - "
            f"{row['seconds']:.1f} s - {row['samples_per_second']:.0f} samples/s")


class PrintEpochs(Hook):
    """One line per epoch on the main rank; parallel runs add the bytes sent per step."""

    def __init__(self, cfg: TrainConfig, log=None):
        self.epochs, self.traffic = cfg.epochs, cfg.world_size > 1
        self.log = log

    def emit(self, strategy, line: str) -> None:
        if self.log is not None:
            self.log(line)
        elif strategy.is_main:
            print(line, flush=True)

    def on_epoch_end(self, strategy, history):
        line = format_epoch(history[-1], self.epochs)
        if self.traffic:
            line += f" - {human_bytes(strategy.comm_report()['bytes_per_step'])}/step sent"
        self.emit(strategy, line)


class Checkpoints(Hook):
    """``--resume``: continue from the newest checkpoint; ``--checkpoint-dir``: one after each
    epoch, and every ``--checkpoint-every`` steps."""

    def __init__(self, cfg: TrainConfig, printer: PrintEpochs | None):
        self.cfg, self.printer = cfg, printer

    def on_start(self, strategy, progress):
        if not self.cfg.resume:
            return

        def say(line):  # resume messages go where the epoch lines go
            if self.printer is not None:
                self.printer.emit(strategy, line)
        epoch, step, history, partial = checkpoint.resume(strategy, self.cfg, say)
        progress.epoch, progress.step, progress.history = epoch, step, history
        self.resumed = {"epoch": epoch, "step": step,
                        "global_step": epoch * progress.steps_per_epoch + step}
        if partial is not None:  # the summed stats so far: the main rank carries them
            progress.partial = (StepStats(partial[0], int(partial[1]), int(partial[2]))
                                if strategy.is_main else StepStats(0.0, 0, 0))

    resumed = None  # where a resumed run started, and when its first step ended

    def on_step_end(self, strategy, progress):
        if self.resumed is not None and "first_step_unix" not in self.resumed:
            self.resumed["first_step_unix"] = time.time()
        every = self.cfg.checkpoint_every
        if (self.cfg.checkpoint_dir and every and progress.global_step % every == 0
                and progress.step < progress.steps_per_epoch):  # epoch ends save below
            checkpoint.save_position(strategy, self.cfg, progress.epoch, progress.step,
                                     progress.history, strategy.reduce_stats(progress.partial))

    def on_epoch_end(self, strategy, history):
        if self.cfg.checkpoint_dir:
            checkpoint.save_position(strategy, self.cfg, history[-1]["epoch"], 0, history, None)

    def on_end(self, strategy, metrics):
        if self.resumed is not None:
            metrics["resumed"] = self.resumed


class InjectFaults(Hook):
    """``--fault KIND:rank=R:step=S``: this rank fails as asked, once per run (``cluster.faults``)."""

    def __init__(self, cfg: TrainConfig, run_dir: str):
        self.faults = [parse_fault(spec) for spec in cfg.fault]
        self.run_dir = run_dir

    def on_step_end(self, strategy, progress):
        maybe_fire(self.faults, strategy.rank, progress.global_step, self.run_dir)


class MemoryMetrics(Hook):
    """``memory`` (rank 0's bytes by kind), ``memory_per_rank``, ``memory_predicted`` (rank 0's,
    from the formulas) and, with fp16, ``loss_scale`` and ``skipped_steps``; ``--memory-report``
    prints the table. A collective (every rank's figures are gathered)."""

    def __init__(self, cfg: TrainConfig, printer):
        self.report, self.printer = cfg.memory_report, printer

    def on_end(self, strategy, metrics):
        mine = strategy.memory_bytes()
        rows = strategy.comm.allgather(np.array([mine[k] for k in KINDS], dtype=np.int64))
        per_rank = [dict(zip(KINDS, map(int, row))) for row in rows.reshape(-1, len(KINDS))]
        metrics.update(memory=per_rank[0], memory_per_rank=per_rank,
                       memory_predicted=strategy.memory_predicted(), **strategy.scaler_report())
        if self.report:
            table = format_table(per_rank, metrics["memory_predicted"])
            if self.printer is not None:
                self.printer.emit(strategy, table)
            elif strategy.is_main:
                print(table, flush=True)


class Heartbeat(Hook):
    """A supervised run's sign of life, for ``restarts.Watchdog``: row ``rank`` of the run's
    ``heartbeats`` file (a small shared array, ``restarts.heartbeats``) holds when this rank last
    made progress, whether it is waiting inside a collective, and its pid."""

    def __init__(self, run_dir: str):
        self.run_dir, self.row = run_dir, None

    def on_start(self, strategy, progress):
        table = heartbeats(self.run_dir, strategy.comm.world_size, mode="r+")
        self.row = table[strategy.rank]
        self.row[:] = (time.time(), 0.0, os.getpid())
        for comm in {id(c): c for c in (strategy.comm, *strategy.mesh.comms())}.values():
            comm.hooks.append(self._collective)

    def _collective(self, event, op, rank, t_s, nbytes) -> None:
        self.row[1] = event == "start"  # waiting on peers is not a stall
        if event == "end":
            self.row[0] = time.time()

    def on_step_end(self, strategy, progress):
        self.row[0] = time.time()


class CommMetrics(Hook):
    """Adds ``bytes_per_step``, ``comm_seconds_fraction``, ``backend`` (and GPU ``staging``)."""

    def on_end(self, strategy, metrics):
        metrics.update(strategy.comm_report())
        metrics["backend"] = strategy.comm.backend_name
        staging = getattr(strategy.comm, "staging", None)
        if staging is not None:  # device -> host -> device copies of the collectives
            metrics["staging"] = staging.as_dict()


class WriteTrace(Hook):
    """``--trace PATH``: every rank's timeline gathered into one Chrome-trace file (collective)."""

    def __init__(self, tracer, path: str):
        self.tracer, self.path = tracer, path

    def on_end(self, strategy, metrics):
        events = gather_events(strategy.comm, self.tracer)
        if events is not None:
            write_chrome_trace(events, self.path)


class WriteOutputs(Hook):
    """``--save`` (the final parameters, .npz) and ``--metrics-json``, from the main rank."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def on_end(self, strategy, metrics):
        params = strategy.full_parameters() if self.cfg.save else None  # collective
        if not strategy.is_main:
            return
        if self.cfg.save:
            atomic_write(self.cfg.save, lambda f: np.savez(f, **params))
        if self.cfg.metrics_json:
            atomic_write_text(self.cfg.metrics_json, json.dumps(metrics, indent=2) + "\n")


def default_hooks(cfg: TrainConfig, log=None, tracer=None, run_dir=None) -> list:
    """The hooks ``cfg`` asks for: printing (unless quiet), checkpoints, injected faults (their
    markers in ``run_dir``), comm figures, the trace, the output files. ``log(line)`` replaces
    printing on the main rank."""
    printer = PrintEpochs(cfg, log) if cfg.verbose or log is not None else None
    hooks = [printer] if printer is not None else []
    hooks.append(Checkpoints(cfg, printer))
    if run_dir is not None:
        hooks.append(Heartbeat(run_dir))
    if cfg.fault:
        hooks.append(InjectFaults(cfg, run_dir))
    hooks += [CommMetrics(), MemoryMetrics(cfg, printer)]
    if tracer is not None and cfg.trace:
        hooks.append(WriteTrace(tracer, cfg.trace))
    hooks.append(WriteOutputs(cfg))
    return hooks
