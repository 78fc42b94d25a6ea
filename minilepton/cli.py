"""``minilepton`` / ``python -m minilepton``: train, the worked example, benchmarks.

    minilepton train [--epochs 5 --batch-size 32 --optimizer adam --lr 1e-3 ...]
    minilepton train --workers 4                    # data parallel over 4 worker processes
    minilepton example logistic [--json]
    minilepton bench NAME [options]

Bad input (a ValueError, DataError, DeviceError or OSError from anywhere) ends the run with one
line on stderr, ``minilepton: error: ...``, and exit status 2; any other failure also gives one
line, with status 1. ``--debug`` shows the traceback instead. Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager

from . import __version__
from .backend import DeviceError
from .bench import main as run_bench
from .bench import names as bench_names
from .cli_simulate import add_calibrate_parser, add_simulate_parser, run_calibrate, run_simulate
from .engine.config import (
    BACKENDS,
    BALANCES,
    DATASETS,
    DEVICES,
    DTYPES,
    LINKS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
)
from .cluster import WorkerError
from .engine.run import OtherRankError, train
from .examples import logistic

# Exit statuses: 0 done; 2 bad input (before any work starts); 1 a failure during the run;
# 130 Ctrl-C; 143 SIGTERM. Each non-zero one comes with one line on stderr.
EXIT_USAGE, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 1, 130, 143


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so workers are stopped and files cleaned up."""


@contextmanager
def _sigterm_unwinds():
    """SIGTERM raises ``Terminated`` in the main thread while the command runs (in this
    process only: a forked worker that inherits the handler dies of the signal as usual)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def _raise_terminated(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class UsageError(Exception):
    """Bad command-line arguments (argparse's complaints, reported as one line)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = {name: f.default for name, f in TrainConfig.__dataclass_fields__.items()}
    g = p.add_argument_group("data and model")
    g.add_argument("--dataset", default=d["dataset"], choices=DATASETS,
                   help="'default' is the embedded Fashion-MNIST subset (offline)")
    g.add_argument("--data-dir", metavar="DIR",
                   help="folder of the four IDX(.gz) files of fashion-mnist or mnist "
                   "(default: looked for in the usual places, then downloaded)")
    g.add_argument("--hidden", type=int, action="extend", nargs="+", metavar="N",
                   help="hidden layer sizes, '--hidden 256 128' or '--hidden 256 --hidden 128' "
                   "(default: one layer of 128)")
    g.add_argument("--dtype", default=d["dtype"], choices=DTYPES,
                   help="floating-point type of parameters and activations")
    g.add_argument("--device", default=d["device"], choices=DEVICES,
                   help="where the arrays live (gpu needs CuPy; auto picks it when usable)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=d["epochs"], help="passes over the training set")
    g.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="global batch size (split across data-parallel workers)")
    g.add_argument("--optimizer", default=d["optimizer"], choices=OPTIMIZERS, help="optimizer")
    g.add_argument("--lr", type=float, default=d["lr"], help="learning rate")
    g.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"],
                   help="SGD L2 weight decay")
    g.add_argument("--seed", type=int, default=d["seed"],
                   help="seed of the initial weights and of the batch order")
    g.add_argument("--blas-threads", type=int, metavar="N",
                   help="BLAS threads per process (default: the cores shared among the workers)")
    g = p.add_argument_group("outputs")
    g.add_argument("--metrics-json", metavar="PATH",
                   help="write the metrics dict as JSON (default: not written)")
    g.add_argument("--save", metavar="PATH",
                   help="write the final parameters as .npz (default: not written)")
    g.add_argument("--checkpoint-dir", metavar="DIR",
                   help="write a checkpoint after each epoch (default: no checkpoints)")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in --checkpoint-dir")
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    g.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    g = p.add_argument_group("parallelism (world size = --workers, or dp × tp × pp)")
    g.add_argument("--workers", type=int, metavar="P",
                   help="worker processes, data parallel unless --dp/--tp/--pp say otherwise "
                   "(default: dp × tp × pp)")
    g.add_argument("--dp", type=int, default=d["dp"], help="data-parallel degree")
    g.add_argument("--tp", type=int, default=d["tp"], help="tensor-parallel degree")
    g.add_argument("--pp", type=int, default=d["pp"], help="pipeline-parallel stages")
    g.add_argument("--micro-batches", type=int, default=d["micro_batches"],
                   help="micro-batches per batch in a pipeline")
    g.add_argument("--schedule", default=d["schedule"], choices=SCHEDULES,
                   help="pipeline schedule")
    g.add_argument("--backend", default=d["backend"], choices=BACKENDS,
                   help="communicator backend")
    g.add_argument("--trace", metavar="PATH",
                   help="write a Chrome-trace timeline of every rank (default: none)")
    g.add_argument("--log-dir", metavar="DIR", help="one log file per rank (default: none)")
    g.add_argument("--bucket-bytes", type=int, default=d["bucket_bytes"],
                   help="gradient bucket size for the all-reduce, in bytes")
    g.add_argument("--sync-every", type=int, default=d["sync_every"], metavar="K",
                   help="K > 1: local SGD, each worker steps alone and the parameters are "
                   "averaged every K steps; 1: gradients all-reduced every step")
    g.add_argument("--overlap", action="store_true",
                   help="all-reduce each gradient bucket on a thread while backward computes "
                   "the earlier layers")
    g.add_argument("--compress", default=d["compress"], metavar="none|fp16|topk:FRACTION",
                   help="gradient compression on the wire")
    g.add_argument("--node-speeds", metavar="1,1,0.5,1",
                   help="simulated speed factor of each worker (default: all equal)")
    g.add_argument("--balance", default=d["balance"], choices=BALANCES,
                   help="share each batch by declared (static) or measured (dynamic) speed")
    g.add_argument("--link", default=d["link"], metavar="|".join(LINKS) + "|LATENCY_US,GBPS",
                   help="simulated interconnect between the workers: a named profile, or "
                   "latency in µs and bandwidth in Gbit/s")
    g = p.add_argument_group("memory")
    g.add_argument("--zero", type=int, default=d["zero"], choices=(0, 1, 2, 3),
                   help="ZeRO stage over the data group: 1 shards the optimizer state, 2 also "
                   "the gradients, 3 also the parameters")
    g.add_argument("--recompute", action="store_true",
                   help="keep only each block's input and recompute it during backward")
    g.add_argument("--precision", default=d["precision"], choices=PRECISIONS,
                   help="compute precision of forward and backward (float32 master weights)")
    g.add_argument("--grad-accum", type=int, default=d["grad_accum"], metavar="K",
                   help="K micro-steps per optimizer step, gradients summed locally")
    g.add_argument("--memory-report", action="store_true",
                   help="print the bytes each rank held, by kind, after training")
    g = p.add_argument_group("fault tolerance")
    g.add_argument("--max-restarts", type=int, default=d["max_restarts"], metavar="N",
                   help="restart a failed job from its newest checkpoint up to N times")
    g.add_argument("--checkpoint-every", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS training steps (default: epoch ends only)")
    g.add_argument("--min-workers", type=int, metavar="M",
                   help="data parallel: after a worker fails twice, restart with one worker "
                   "fewer, down to M (default: always the full count)")
    g.add_argument("--fault", action="append", default=[], metavar="KIND:rank=R:step=S",
                   help="inject a failure (raise, kill, stall, slow) into rank R after step S; "
                   "repeatable; each fires once per run")


def build_parser() -> argparse.ArgumentParser:
    """The ``minilepton`` parser with its ``train``, ``example`` and ``bench`` commands."""

    class Help(argparse.ArgumentDefaultsHelpFormatter):
        # Each flag's default after its help, unless the help says it already or it has none.
        def _get_help_string(self, action):
            if action.default is None or "(default:" in (action.help or ""):
                return action.help
            return super()._get_help_string(action)

    parser = _Parser(prog="minilepton", description="Distributed deep-learning training you "
                     "can read end to end.", formatter_class=Help)
    parser.add_argument("--version", action="version", version=f"minilepton {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    train = sub.add_parser("train", help="train the MLP (the article's §5 model by default)",
                           description="Train an MLP on MNIST-format data, in one process or "
                           "many. Defaults: MLP 784-128-10, Adam lr 1e-3, batch 32, 5 epochs.",
                           formatter_class=Help)
    _add_train_arguments(train)
    example = sub.add_parser("example", help="a worked example from the article, corrected",
                             formatter_class=Help)
    example.add_argument("name", choices=["logistic"], help="logistic: §4, one SGD step")
    example.add_argument("--json", action="store_true", help="machine-readable values")
    example.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    bench = sub.add_parser("bench", help="run a benchmark (minilepton bench NAME --help)",
                           description=_bench_description(),
                           formatter_class=Help)
    bench.add_argument("name", nargs="?", help="the benchmark")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="its options")
    add_simulate_parser(sub, Help, _add_train_arguments)
    add_calibrate_parser(sub, Help)
    return parser


def _bench_description() -> str:
    listed = ", ".join(bench_names()) or "none installed"
    return f"Run one benchmark. Available: {listed}."


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A validated TrainConfig from parsed ``train`` arguments (ValueError when inconsistent)."""
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    values["hidden"] = tuple(args.hidden) if args.hidden else (128,)
    values["verbose"] = not args.quiet
    return TrainConfig(**values)


def run_train(cfg: TrainConfig) -> dict:
    """``ml.train(cfg)``: 1 process, P workers, or this rank of an mpiexec job; the metrics."""
    return train(cfg)


def _run(args: argparse.Namespace) -> int:
    if args.command == "train":
        run_train(config_from_args(args))
        return 0
    if args.command == "example":
        return logistic.main(as_json=args.json)
    if args.command == "simulate":
        return run_simulate(args, config_from_args)
    if args.command == "calibrate":
        return run_calibrate(args)
    if args.name is None:
        raise UsageError(f"bench needs a NAME. {_bench_description()}")
    return run_bench(args.name, args.args, parser_class=_Parser)


def _expected_errors() -> tuple:
    return (ValueError, DeviceError, OSError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``minilepton`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args, extra = build_parser().parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} "
                             f"(see 'minilepton {args.command} --help')")
        with _sigterm_unwinds():
            return _run(args)
    except UsageError as exc:
        print(f"minilepton: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if debug:
            raise
        print("minilepton: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("minilepton: terminated (SIGTERM); workers stopped", file=sys.stderr)
        return EXIT_TERMINATED
    except OtherRankError:  # a rank of an mpiexec job whose rank 0 reports the error
        return EXIT_USAGE
    except Exception as exc:  # every failure becomes one line unless --debug
        if debug:
            raise
        expected = isinstance(exc, _expected_errors())
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, WorkerError):  # "worker rank R failed: <its exception>"
            message += " (rerun with --debug for the worker's traceback)"
        elif not expected:
            message = f"{type(exc).__name__}: {message} (rerun with --debug for the traceback)"
        print(f"minilepton: error: {message}", file=sys.stderr)
        return EXIT_USAGE if expected else EXIT_FAILURE
