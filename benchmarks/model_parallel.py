"""Model-parallel measurements: pipeline bubbles and activation memory, tensor-parallel memory
and step time. Every figure is a median over repeated steps, runs are interleaved, and ratios
are taken against a baseline measured in the same run.

    python benchmarks/model_parallel.py pipeline   # 4 stages, 16 micro-batches, GPipe vs 1F1B
    python benchmarks/model_parallel.py tp         # MLP 784-4096-4096-10 at tp = 1, 2, 4
    python benchmarks/model_parallel.py figure     # figures/pipeline_gpipe_vs_1f1b.png

Two bubble figures: the wall-clock idle share of each stage (honest only when every stage has
its own core and the machine is quiet), and the bubble of the executed schedule replayed with
each op's measured CPU seconds on an ideal clock (one device per stage, free messages): it keeps
what the measurement knows (unequal stages, backward ≈ 2× forward, the real order of ops) and
drops what a shared CPU adds. The replayed bubble is given for the busiest stage (the idle
share of the stage that sets the pace: the fill-and-drain bubble (P−1)/(M+P−1) predicts) and
over all stages (which adds the cost of unequal stages: stage 0 computes no ∂x, the last stage
also the loss). ``MINILEPTON_QUICK=1`` shrinks every setting (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

import minilepton as ml
from minilepton.cluster import launch
from minilepton.parallel.memory import human_bytes
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.strategy import ParallelStrategy
from minilepton.parallel.schedules import bubble_fraction, replay

QUICK = os.environ.get("MINILEPTON_QUICK") == "1"


def _pipeline_worker(comm, width, stages, micro_batches, rows, schedule, steps, trace):
    """Train ``steps`` steps of a pipeline of ``stages`` equal Linear(width, width) layers."""
    from minilepton.engine.trace import Tracer
    from minilepton.optim import SGD
    model = ml.nn.Sequential(*[ml.nn.Linear(width, width, rng=i) for i in range(stages)])
    tracer = Tracer(comm.rank, max_steps=steps) if trace else None
    strategy = ParallelStrategy(Mesh(comm, pp=stages), model, lambda ps: SGD(ps, lr=1e-3),
                                micro_batches=micro_batches, schedule=schedule, tracer=tracer)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, width)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    bubbles, ops = [], []
    for _ in range(steps):
        strategy.train_step(x, y, rows)
        bubbles.append(strategy.pipe.bubble_fraction())
        ops.append(strategy.pipe.last_ops)
    events = None
    if tracer is not None:  # the last step only, for the Gantt chart
        t0, t1 = tracer.steps[-1]
        events = [e for e in tracer.events() if e["start_s"] >= t0 and e["end_s"] <= t1]
    return {"bubble": statistics.median(bubbles[1:] or bubbles), "ops": ops[1:] or ops,
            "peak_activation_bytes": strategy.pipe.meter.peak_bytes,
            "parameter_bytes": strategy.memory_report()["parameter_bytes"], "events": events}


def pipeline(repeats: int, stages: int = 4, micro_batches: int = 16, width: int = 1024,
             rows: int = 2048, steps: int = 6) -> dict:
    if QUICK:
        micro_batches, width, rows, steps = 8, 128, 128, 3
    theory = bubble_fraction(stages, micro_batches)
    runs = {"gpipe": [], "1f1b": []}
    for _ in range(repeats):
        for name, results in runs.items():  # interleaved: drift in the load hits both alike
            results.append(launch(_pipeline_worker, stages,
                                     (width, stages, micro_batches, rows, name, steps, False)))
    print(f"pipeline: {stages} stages × Linear({width}, {width}), {micro_batches} micro-batches "
          f"of {rows // micro_batches} rows, {repeats} runs × {steps} steps, "
          f"{ml.backend.cpu_count()} cores")
    print(f"  theory: bubble (P−1)/(M+P−1) = {theory:.3f}; load average "
          f"{os.getloadavg()[0]:.1f} on {ml.backend.cpu_count()} cores")
    out = {"theory": theory}
    for name, results in runs.items():
        wall = [statistics.mean(r["bubble"] for r in ranks) for ranks in results]
        # each step's executed ops with their CPU seconds, replayed with one device per stage
        replays = [replay([r["ops"][k] for r in ranks])
                   for ranks in results for k in range(len(ranks[0]["ops"]))]
        peak = [r["peak_activation_bytes"] for r in results[0]]
        out[name] = {"bubble_wall": statistics.median(wall),
                     "bubble_replayed": statistics.median(r["bubble"] for r in replays),
                     "bubble_busiest": statistics.median(r["bubble_busiest"] for r in replays),
                     "peak_activation_bytes": peak}
        print(f"  {name:5s}: replayed bubble, busiest stage {out[name]['bubble_busiest']:.3f} "
              f"({100 * (out[name]['bubble_busiest'] - theory):+.1f} points vs theory), all "
              f"stages {out[name]['bubble_replayed']:.3f}; wall-clock idle share "
              f"{out[name]['bubble_wall']:.3f}")
        print(f"         peak activations per stage {', '.join(human_bytes(p) for p in peak)}")
    ratio = out["1f1b"]["peak_activation_bytes"][0] / out["gpipe"]["peak_activation_bytes"][0]
    print(f"  1F1B / GPipe peak activation memory on stage 0: {ratio:.3f}")
    return out


def _tp_worker(comm, sizes, rows, steps):
    from minilepton.optim import Adam
    strategy = ParallelStrategy(Mesh(comm, tp=comm.world_size), ml.nn.mlp(sizes, seed=0),
                                lambda ps: Adam(ps))
    rng = np.random.default_rng(0)
    x = rng.random((rows, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], rows)
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        strategy.train_step(x, y, rows)
        seconds.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(seconds[1:]),
            "parameter_bytes": strategy.memory_report()["parameter_bytes"]}


def tensor_parallel(repeats: int) -> dict:
    sizes = [784, 512, 512, 10] if QUICK else [784, 4096, 4096, 10]
    rows, steps = (64, 3) if QUICK else (256, 6)
    degrees = (1, 2, 4)
    runs = {tp: [] for tp in degrees}
    for _ in range(repeats):
        for tp in degrees:
            runs[tp].append(launch(_tp_worker, tp, (sizes, rows, steps)))
    print(f"tensor parallel: MLP {'-'.join(map(str, sizes))}, batch {rows}, Adam, float32, "
          f"{repeats} runs × {steps} steps, {ml.backend.cpu_count()} cores")
    out = {}
    for tp in degrees:
        step_s = statistics.median(max(r["step_s"] for r in ranks) for ranks in runs[tp])
        params = [r["parameter_bytes"] for r in runs[tp][0]]
        out[tp] = {"step_s": step_s, "parameter_bytes": params}
    for tp in degrees:
        params, step_s = max(out[tp]["parameter_bytes"]), out[tp]["step_s"]
        print(f"  tp={tp}: parameters per rank {human_bytes(params)} "
              f"({params / out[1]['parameter_bytes'][0]:.3f} of tp=1); step "
              f"{1e3 * step_s:.1f} ms ({step_s / out[1]['step_s']:.2f}× tp=1)")
    return out


def figure(path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minilepton.engine.trace import COLORS, gantt
    stages, micro_batches = 4, 8
    width, rows = (128, 128) if QUICK else (1024, 1024)
    theory = bubble_fraction(stages, micro_batches)
    fig, axes = plt.subplots(4, 1, figsize=(11, 10))
    for k, name in enumerate(("gpipe", "1f1b")):
        label = "GPipe" if name == "gpipe" else "1F1B"
        ranks = launch(_pipeline_worker, stages,
                       (width, stages, micro_batches, rows, name, 3, True))
        events = [e for r in ranks for e in r["events"]]
        measured = statistics.mean(r["bubble"] for r in ranks)
        peak = human_bytes(ranks[0]["peak_activation_bytes"])
        gantt(axes[2 * k], events, f"{label}, wall clock on {ml.backend.cpu_count()} shared "
              f"cores: idle share {measured:.2f} (theory {theory:.2f}); stage 0 holds {peak} "
              f"of activations at peak", label="stage")
        ideal = replay([r["ops"][-1] for r in ranks])
        spans = [{"name": phase, "rank": s, "start_s": a, "end_s": b,
                  "args": {"micro_batch": m}} for s, m, phase, a, b in ideal["spans"]]
        gantt(axes[2 * k + 1], spans, f"{label}, same ops, CPU times, one device per stage: "
              f"bubble {ideal['bubble_busiest']:.2f} busiest stage, {ideal['bubble']:.2f} all "
              f"(theory {theory:.2f})", t0=0.0, label="stage")
    handles = [matplotlib.patches.Patch(color=COLORS[k], label=k)
               for k in ("forward", "backward", "send", "recv", "collective")]
    axes[0].legend(handles=handles, loc="upper right", fontsize=7, ncols=5)
    fig.suptitle(f"One training step, {stages} stages × {micro_batches} micro-batches "
                 "(numbers: micro-batch; white: idle, the bubble)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pipeline", "tp", "figure", "all"))
    parser.add_argument("--repeats", type=int, default=1 if QUICK else 3)
    parser.add_argument("--stages", type=int, default=4, help="pipeline: stages (= workers)")
    parser.add_argument("--micro-batches", type=int, default=16, help="pipeline: M")
    parser.add_argument("--width", type=int, default=1024, help="pipeline: Linear(width, width)")
    parser.add_argument("--rows", type=int, default=2048, help="pipeline: batch size")
    parser.add_argument("--out", default=os.path.join("figures", "pipeline_gpipe_vs_1f1b.png"))
    args = parser.parse_args(argv)
    if args.what in ("pipeline", "all"):
        pipeline(args.repeats, args.stages, args.micro_batches, args.width, args.rows)
    if args.what in ("tp", "all"):
        tensor_parallel(args.repeats)
    if args.what in ("figure", "all"):
        figure(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
