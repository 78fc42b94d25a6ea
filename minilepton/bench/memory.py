"""Memory per rank by kind, and step time, for plain data parallelism and each memory technique.

One model (an MLP, Adam) trains a few steps on synthetic data in each variant: plain data
parallelism and ZeRO stages 1-3 at every worker count, and, at the middle count, recomputation,
bf16, fp16, gradient accumulation and all of them together. For each, rank 0's bytes by kind as
the tracker measured them beside the formulas' prediction (``parallel.memory``), and the median
step time as a ratio against plain data parallelism at the same worker count. Variants run in
interleaved rounds (every variant once, then again), so a noisy neighbour slows all alike.
Files are written only where ``--json`` and ``--figure`` say.

    minilepton bench memory --workers 1,2,4 --figure figures/memory_zero.png
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from .. import nn, optim
from ..backend import cpu_count
from ..cluster import launch
from ..parallel.memory import KINDS, human_bytes
from ..parallel.mesh import Mesh
from ..parallel.strategy import ParallelStrategy
from ._common import parse_sizes, save_figure, save_json

STAGES = {"plain": {}, "zero1": {"zero": 1}, "zero2": {"zero": 2}, "zero3": {"zero": 3}}
EXTRAS = {"recompute": {"recompute": True}, "bf16": {"precision": "bf16"},
          "fp16": {"precision": "fp16"}, "accum4": {"grad_accum": 4},
          "zero3+bf16+recompute": {"zero": 3, "precision": "bf16", "recompute": True}}
SHORT = {"parameters_bytes": "params", "gradients_bytes": "grads",
         "optimizer_bytes": "optim", "activations_peak_bytes": "activ",
         "buffers_bytes": "buffers"}


def add_arguments(parser) -> None:
    parser.add_argument("--workers", default="1,2,4", help="world sizes, comma-separated")
    parser.add_argument("--hidden", default="1024,1024,1024", help="hidden layer sizes")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per launch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads per worker")
    parser.add_argument("--extras", default=",".join(EXTRAS),
                        help=f"variants beside the ZeRO stages, of: {', '.join(EXTRAS)} "
                        "('' for none)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="write the results as JSON (default: not written)")
    parser.add_argument("--figure", default=None, metavar="PATH",
                        help="stacked bars per rank, measured beside predicted "
                        "(default: not drawn)")


def _worker(comm, sizes, batch, steps, warmup, memory):
    """Train ``warmup + steps`` steps; this rank's bytes, rank 0's prediction, step times."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    strategy = ParallelStrategy(Mesh(comm, dp=comm.world_size), nn.mlp(sizes, seed=0),
                                lambda ps: optim.Adam(ps, lr=1e-4), **memory)
    local = strategy.local_indices(np.arange(batch))
    times = []
    for step in range(warmup + steps):
        if step == warmup:
            comm.barrier()
        t0 = time.perf_counter()
        strategy.train_step(x[local], y[local], batch)
        times.append(time.perf_counter() - t0)
    return {"memory": strategy.memory_bytes(), "predicted": strategy.memory_predicted(),
            "step_seconds": statistics.median(times[warmup:])}


def _variants(workers, extras) -> list:
    """(name, P, options): the ZeRO stages at every P, the extras at the middle P."""
    out = [(name, p, opts) for p in workers for name, opts in STAGES.items()]
    middle = workers[len(workers) // 2]
    return out + [(name, middle, EXTRAS[name]) for name in extras]


def _plot(rows, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    p = max(r["workers"] for r in rows)
    chosen = [r for r in rows if r["workers"] == p and r["variant"] in STAGES]
    kinds = list(KINDS)
    colors = plt.cm.tab10.colors
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(chosen) * (p + 1) / 3, 3.8))
    ticks, labels, x = [], [], 0.0
    for r in chosen:
        bars = [(f"r{q}", m) for q, m in enumerate(r["memory_per_rank"])]
        bars.append(("pred", r["predicted"]))
        for j, (label, m) in enumerate(bars):
            bottom = 0.0
            for k, kind in enumerate(kinds):
                height = (m.get(kind) or 0) / 2 ** 20
                ax.bar(x + j, height, bottom=bottom, color=colors[k], width=0.85,
                       hatch="//" if label == "pred" else None, edgecolor="white",
                       label=SHORT[kind] if r is chosen[0] and j == 0 else None)
                bottom += height
            ticks.append(x + j)
            labels.append(label)
        top = max(sum(m.get(k) or 0 for k in kinds) for _, m in bars) / 2 ** 20
        ax.text(x + len(bars) / 2 - 0.5, top * 1.02, r["variant"], ha="center", va="bottom",
                fontsize=9)
        x += len(bars) + 1
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel("MiB per rank")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.legend(fontsize=7, ncol=5, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)


def run(args) -> int:
    workers, hidden = parse_sizes(args.workers, args.hidden)
    extras = [e for e in args.extras.split(",") if e]
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown --extras {', '.join(unknown)}; choose from {', '.join(EXTRAS)}")
    if not workers or min(workers) < 1 or args.batch_size < max(workers) or args.steps < 1:
        raise ValueError("--workers, --steps must be positive, --batch-size at least the workers")
    sizes = [784, *hidden, 10]
    variants = _variants(workers, extras)
    runs = {(name, p): [] for name, p, _ in variants}
    for rnd in range(args.rounds):
        for name, p, opts in variants:
            out = launch(_worker, p, args=(sizes, args.batch_size, args.steps, args.warmup,
                                           opts), blas_threads=args.blas_threads)
            runs[(name, p)].append(out)
            print(f"round {rnd + 1}/{args.rounds} P={p} {name:>20}: "
                  f"{1e3 * out[0]['step_seconds']:7.1f} ms/step", flush=True)
    rows = []
    for name, p, opts in variants:
        mine = runs[(name, p)]
        # the same round's plain run met the same neighbours: ratios round by round
        ratios = [o[0]["step_seconds"] / b[0]["step_seconds"]
                  for o, b in zip(mine, runs[("plain", p)])]
        rows.append({"variant": name, "workers": p, "options": opts,
                     "memory": mine[0][0]["memory"], "predicted": mine[0][0]["predicted"],
                     "memory_per_rank": [r["memory"] for r in mine[0]],
                     "step_seconds": statistics.median(o[0]["step_seconds"] for o in mine),
                     "step_ratio": statistics.median(ratios), "round_ratios": ratios})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    model = "mlp " + "-".join(map(str, sizes))
    print(f"\n{model}, Adam, batch {args.batch_size}, {cpu_count()} cores, load {load:.2f}; "
          "rank 0's bytes, measured (predicted where they differ)")
    head = "".join(f"{SHORT[k]:>20}" for k in KINDS)
    print(f"{'variant':>22} {'P':>2}{head}{'total':>11} {'step ×':>7}")
    for r in rows:
        cells = []
        for k in KINDS:
            m, pr = r["memory"][k], r["predicted"][k]
            cell = human_bytes(m) + ("" if pr is None or pr == m else f" ({human_bytes(pr)})")
            cells.append(f"{cell:>20}")
        total = human_bytes(sum(r["memory"].values()))
        print(f"{r['variant']:>22} {r['workers']:>2}{''.join(cells)}{total:>11} "
              f"{r['step_ratio']:>7.2f}")
    result = {"benchmark": "memory", "model": model, "optimizer": "adam",
              "batch_size": args.batch_size, "cores": cpu_count(), "load_average": load,
              "blas_threads": args.blas_threads, "steps": args.steps, "rounds": args.rounds,
              "arguments": vars(args), "results": rows}
    if args.json:
        save_json(result, args.json)
    if args.figure:
        _plot(rows, args.figure, f"{model}, Adam: bytes per rank at P = {max(workers)} "
                                 "(hatched: predicted)")
    return 0
