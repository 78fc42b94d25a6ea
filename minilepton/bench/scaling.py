"""Data-parallel scaling: samples/s of the whole training step at each number of workers.

Strong scaling (default) keeps the global batch fixed, so P workers each compute B/P samples and
the ideal speedup is P; ``--weak`` keeps the per-worker batch fixed (global batch B·P). A step is
what ``minilepton train`` does per batch: slice the shard, forward, backward, the bucketed
all-reduce, the optimizer update. World sizes are run in interleaved rounds (1, 2, 4, 1, 2, 4,
…) and the median of each is taken, so a noisy neighbour hurts every size alike; speedups are
ratios against the smallest world size measured in the same run. The speedup of the fastest
single steps is reported too: on a shared machine it is the least disturbed estimate.
``--compress`` lists several gradient encodings to compare bytes per step and time.

    minilepton bench scaling --workers 1,2 --hidden 1024,1024 --batch-size 1024
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from .. import nn, optim
from ..backend import cpu_count
from ..cluster import launch
from ..cluster.launcher import BACKENDS
from ..parallel.mesh import Mesh
from ..parallel.strategy import ParallelStrategy
from ._common import parse_sizes, save_figure, save_json


def add_arguments(parser) -> None:
    parser.add_argument("--workers", default="1,2", help="world sizes, comma-separated")
    parser.add_argument("--hidden", default="1024,1024", help="hidden layer sizes of the MLP")
    parser.add_argument("--batch-size", type=int, default=1024,
                        help="global batch (strong), or per-worker batch with --weak")
    parser.add_argument("--weak", action="store_true", help="weak scaling: batch per worker")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per launch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per launch")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads per worker")
    parser.add_argument("--backend", choices=BACKENDS, default="shm")
    parser.add_argument("--bucket-bytes", type=int, default=1 << 22)
    parser.add_argument("--link", default=None,
                        help="simulated interconnect (nvlink, infiniband, 10gbe, 1gbe)")
    parser.add_argument("--compress", default="none",
                        help="gradient encodings to compare, e.g. none,fp16,topk:0.01")
    parser.add_argument("--overlap", default="off", choices=("off", "on", "both"),
                        help="all-reduce buckets on a thread while backward runs")
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    parser.add_argument("--figure", metavar="PATH", help="also draw the speedup plot here")


def _worker(comm, sizes, global_batch, optimizer, steps, warmup, bucket_bytes, compress,
            overlap=False):
    """Time ``steps`` training steps on synthetic data; rank 0 returns the medians."""
    rng = np.random.default_rng(0)
    x = rng.random((global_batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], global_batch)
    model = nn.mlp(sizes, seed=0)
    opt = optim.SGD(model.parameters(), lr=1e-3) if optimizer == "sgd" else optim.Adam(
        model.parameters(), lr=1e-4)
    strat = ParallelStrategy(Mesh(comm, dp=comm.world_size), model, lambda params: opt,
                             bucket_bytes=bucket_bytes, compress=compress, overlap=overlap)
    batch = np.arange(global_batch)
    times, sync_s, sync_bytes = [], [], []
    for step in range(warmup + steps):
        if step == warmup:
            comm.barrier()
        s0, b0 = strat.step_comm_seconds, strat.step_bytes
        t0 = time.perf_counter()
        local = strat.local_indices(batch)
        strat.train_step(x[local], y[local], global_batch)
        if step >= warmup:
            times.append(time.perf_counter() - t0)
            sync_s.append(strat.step_comm_seconds - s0)
            sync_bytes.append(strat.step_bytes - b0)
    step_s = statistics.median(times)
    return {"step_seconds": step_s, "samples_per_second": global_batch / step_s,
            "best_samples_per_second": global_batch / min(times),
            "comm_seconds_fraction": statistics.median(sync_s) / step_s,
            "bytes_per_step": statistics.median(sync_bytes)}


def _plot(rows, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for compress in sorted({r["compress"] for r in rows}):
        mine = [r for r in rows if r["compress"] == compress]
        label = "measured" if compress == "none" else f"measured, {compress}"
        xs = [r["workers"] for r in mine]
        line, = ax.plot(xs, [r["speedup"] for r in mine], "o-", label=f"{label} (median step)")
        ax.fill_between(xs, [min(r["round_speedups"]) for r in mine],  # spread over rounds
                        [max(r["round_speedups"]) for r in mine], color=line.get_color(),
                        alpha=0.2, label="min-max over rounds")
        ax.plot(xs, [r["best_speedup"] for r in mine], "s:", color=line.get_color(),
                label=f"{label} (fastest step)")
    ps = sorted({r["workers"] for r in rows})
    ax.plot(ps, [p / ps[0] for p in ps], "k--", label="ideal")
    ax.set_xlabel("workers")
    ax.set_ylabel(f"speedup over {ps[0]} worker(s)")
    ax.set_xticks(ps)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def run(args) -> int:
    workers, hidden = parse_sizes(args.workers, args.hidden)
    if not workers or min(workers) < 1 or args.batch_size < 1 or args.steps < 1:
        raise ValueError("--workers, --batch-size and --steps must be positive")
    sizes = [784, *hidden, 10]
    encodings = args.compress.split(",")
    if args.overlap != "off":  # each variant is an (encoding, overlap) pair, named for the table
        encodings = [f"{c}+overlap" if on else c for c in encodings
                     for on in ((False, True) if args.overlap == "both" else (True,))]
    samples = {(c, p): [] for c in encodings for p in workers}
    for rnd in range(args.rounds):
        for compress in encodings:
            for p in workers:
                batch = args.batch_size * p if args.weak else args.batch_size
                if batch < p:
                    raise ValueError(f"--batch-size {batch} is smaller than {p} workers")
                encoding, _, overlap = compress.partition("+")
                out = launch(_worker, p, args=(sizes, batch, args.optimizer, args.steps,
                                               args.warmup, args.bucket_bytes, encoding,
                                               overlap == "overlap"),
                             backend=args.backend, blas_threads=args.blas_threads,
                             link=args.link)[0]
                samples[(compress, p)].append(out)
                print(f"round {rnd + 1}/{args.rounds} {compress:>9} P={p}: "
                      f"{out['samples_per_second']:9.0f} samples/s, "
                      f"comm {100 * out['comm_seconds_fraction']:4.1f}% of the step", flush=True)
    rows = []
    for compress in encodings:
        base = statistics.median(o["samples_per_second"] for o in samples[(compress, workers[0])])
        best_base = max(o["best_samples_per_second"] for o in samples[(compress, workers[0])])
        for p in workers:
            runs = samples[(compress, p)]
            sps = statistics.median(o["samples_per_second"] for o in runs)
            best = max(o["best_samples_per_second"] for o in runs)
            rows.append({"compress": compress, "workers": p, "samples_per_second": sps,
                         "speedup": sps / base, "ideal": p / workers[0],
                         # the fastest single step of all rounds: the least disturbed estimate
                         "best_samples_per_second": best, "best_speedup": best / best_base,
                         "comm_seconds_fraction": statistics.median(
                             o["comm_seconds_fraction"] for o in runs),
                         "bytes_per_step": statistics.median(o["bytes_per_step"] for o in runs),
                         "rounds": [o["samples_per_second"] for o in runs],
                         # the same round's ratio: both sizes met the same neighbours
                         "round_speedups": [o["samples_per_second"] / b["samples_per_second"]
                                            for o, b in zip(runs, samples[(compress, workers[0])])]})
    mode = "weak" if args.weak else "strong"
    result = {"benchmark": "scaling", "mode": mode, "cores": cpu_count(),
              "blas_threads": args.blas_threads, "model": "mlp " + "-".join(map(str, sizes)),
              "optimizer": args.optimizer, "batch_size": args.batch_size,
              "backend": args.backend, "link": args.link, "steps": args.steps,
              "rounds": args.rounds,
              "arguments": vars(args), "results": rows}
    print(f"\n{mode} scaling, {result['model']}, batch {args.batch_size}, "
          f"{args.blas_threads} BLAS thread(s) per worker, {cpu_count()} cores")
    print(f"{'compress':>9} {'workers':>7} {'samples/s':>10} {'speedup':>8} {'best':>6} "
          f"{'ideal':>6} {'comm %':>7} {'bytes/step':>11}  per-round speedups")
    for r in rows:
        print(f"{r['compress']:>9} {r['workers']:>7} {r['samples_per_second']:>10.0f} "
              f"{r['speedup']:>8.2f} {r['best_speedup']:>6.2f} {r['ideal']:>6.1f} "
              f"{100 * r['comm_seconds_fraction']:>7.1f} "
              f"{r['bytes_per_step']:>11.0f}  "
              + " ".join(f"{x:.2f}" for x in r["round_speedups"]))
    if args.json:
        save_json(result, args.json)
    if args.figure:
        _plot(rows, args.figure, f"{mode} scaling, {result['model']}, batch {args.batch_size}, "
                                 f"{cpu_count()} cores")
    return 0
