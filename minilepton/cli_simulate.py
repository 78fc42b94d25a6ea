"""The ``simulate`` and ``calibrate`` commands: the cost model from the command line.

    minilepton simulate --workers 4 --hidden 256 256        # the same flags as train
    minilepton simulate --model gpt --layers 96 --hidden-size 12288 --heads 96 --seq-len 2048 \\
        --vocab 51200 --batch-size 1536 --dp 16 --tp 8 --pp 8 --micro-batch-size 1 \\
        --schedule 1f1b --precision bf16 --recompute --hardware a100-80gb
    minilepton simulate ... --workers 1024 --search          # every layout that fits, ranked
    minilepton calibrate                                      # measure this machine (< 1 min)

``simulate`` takes every flag of ``train`` (those that change no step, such as ``--epochs`` or
``--save``, are accepted and ignored) plus the model, hardware and search flags below. It starts
no worker process: one prediction is arithmetic on the profile.
"""

from __future__ import annotations

import argparse
import json
import sys

from .engine import calibrate as calibration
from .engine.predict import simulate
from .sim import builtin_names
from .sim.report import prediction_text, search_text


def add_simulate_parser(sub, formatter_class, add_train_arguments):
    """``minilepton simulate``: every train flag, then the cost model's own."""
    p = sub.add_parser("simulate", help="predict a training step's time, throughput and "
                       "memory, on this machine or on 1 to 10,000 GPUs",
                       description="Predict one training step of the layout the train flags "
                       "describe (no worker is started). Write 'simulate' for 'train' in any "
                       "training command to get its prediction.", formatter_class=formatter_class)
    add_train_arguments(p)
    g = p.add_argument_group("model (default: the MLP of --hidden)")
    g.add_argument("--model", choices=("mlp", "gpt"), default="mlp",
                   help="mlp: the MLP train builds; gpt: a GPT decoder of the sizes below")
    g.add_argument("--layers", type=int, default=12, help="GPT: transformer layers")
    g.add_argument("--hidden-size", type=int, default=768, help="GPT: hidden width h")
    g.add_argument("--heads", type=int, default=12, help="GPT: attention heads")
    g.add_argument("--seq-len", type=int, default=1024, help="GPT: tokens per sequence (sample)")
    g.add_argument("--vocab", type=int, default=50257, help="GPT: vocabulary size")
    g.add_argument("--flash-attention", action="store_true",
                   help="GPT: attention that keeps no s×s scores (activation memory and traffic)")
    g.add_argument("--micro-batch-size", type=int, metavar="B",
                   help="samples per micro-batch; the micro-batch count becomes batch / (dp·B) "
                   "(default: --micro-batches when --pp > 1, else the whole replica batch)")
    g.add_argument("--virtual-stages", type=int, default=1, metavar="V",
                   help="interleaved pipeline: V model chunks per device (1F1B timing over V× "
                   "the micro-batches)")
    g = p.add_argument_group("hardware")
    g.add_argument("--hardware", metavar="NAME|PATH",
                   help=f"{', '.join(builtin_names())}, a profile JSON, or this-machine "
                   "(default: this machine, measured by calibrate on first use)")
    g.add_argument("--gpus-per-node", type=int, metavar="G",
                   help="devices per node of a built-in profile (default: the profile's, 8)")
    g.add_argument("--network", metavar="NAME|LATENCY_US,GBPS",
                   help="the link between nodes of a built-in profile, e.g. ib-hdr, ib-ndr, "
                   "roce-400, ethernet-100g (default: the profile's)")
    g = p.add_argument_group("output")
    g.add_argument("--search", action="store_true",
                   help="rank every layout (dp, tp, pp, micro-batch, ZeRO, recompute) of "
                   "--workers devices that fits in memory")
    g.add_argument("--top", type=int, default=15, help="layouts shown by --search")
    g.add_argument("--json", action="store_true", help="one JSON object on stdout")
    return p


def add_calibrate_parser(sub, formatter_class):
    p = sub.add_parser("calibrate", help="measure this machine for simulate (under a minute)",
                       description="Time matrix products, memory-bound work, optimizers, the "
                       "engine's own cost and the collectives between worker processes, and "
                       "keep the profile in the per-user cache folder.",
                       formatter_class=formatter_class)
    p.add_argument("--output", metavar="PATH",
                   help="write the profile here (default: the per-user cache folder)")
    p.add_argument("--json", action="store_true", help="print the profile as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return p


def check_options(args: argparse.Namespace) -> None:
    """One-line ValueError for simulate options that cannot work."""
    for name in ("layers", "hidden_size", "heads", "seq_len", "vocab", "virtual_stages", "top"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                             f"not {value}")
    for name in ("micro_batch_size", "gpus_per_node"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, "
                             f"not {value}")


def run_simulate(args: argparse.Namespace, config_from_args) -> int:
    check_options(args)
    cfg = config_from_args(args)
    quiet = args.json or args.quiet

    def log(line):
        if not quiet:
            print(line, file=sys.stderr, flush=True)

    result = simulate(cfg, args, log=log)
    if args.json:
        print(json.dumps(result, indent=1, default=float))
    elif result["kind"] == "search":
        print(search_text(result, args.top))
    else:
        print(prediction_text(result))
    return 0


def run_calibrate(args: argparse.Namespace) -> int:
    quiet = args.json
    profile = calibration.calibrate(log=(lambda line: None) if quiet else print)
    path = calibration.save(profile, args.output)
    if args.json:
        print(json.dumps(profile, indent=1))
    else:
        print(f"wrote {path} ({profile['calibration_seconds']:.0f} s)")
    return 0
