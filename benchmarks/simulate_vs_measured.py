"""The cost model against this machine: predicted and measured samples/s of layouts run here.

In one session: ``minilepton calibrate``'s measurements, once per round interleaved with the
runs, their median taken value by value (or one profile, ``--profile PATH``), then for each
layout below its prediction (``minilepton simulate`` with the same flags, for a
whole epoch of the embedded data set: full batches and the last, partial one) and its
measurement (``ml.train`` for ``--epochs`` epochs; the median samples/s of the epochs after
the first, itself the median over ``--rounds`` interleaved rounds). The load average is
recorded before and after every run, and before each run the script waits (up to ``--wait-s``)
until other processes leave the cores nearly idle (``--max-busy``).

    python benchmarks/simulate_vs_measured.py --rounds 3 \\
        --json benchmarks/simulate_vs_measured.json --figure figures/simulate_vs_measured.png

Nothing is written unless ``--json`` or ``--figure`` says where.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from types import SimpleNamespace

import minilepton as ml
from minilepton import cli, sim
from minilepton.engine import calibrate, predict

WIDE = "--hidden 512 512 --batch-size 240"
LAYOUTS = [  # (name, train flags)
    ("article's MLP, one process", "--blas-threads 1"),
    ("wide MLP, one process", f"{WIDE} --blas-threads 1"),
    ("article's MLP, dp 2", "--workers 2"),
    ("data parallel, dp 2", f"--workers 2 {WIDE}"),
    ("data parallel, dp 4", f"--workers 4 {WIDE}"),
    ("tensor parallel, tp 2", f"--tp 2 {WIDE}"),
    ("tensor parallel, tp 4", f"--tp 4 {WIDE}"),
    ("pipeline pp 2, GPipe", f"--pp 2 {WIDE} --micro-batches 4 --schedule gpipe"),
    ("pipeline pp 2, 1F1B", f"--pp 2 {WIDE} --micro-batches 4 --schedule 1f1b"),
    ("pipeline pp 4, 1F1B",
     "--pp 4 --hidden 256 256 256 --batch-size 240 --micro-batches 8 --schedule 1f1b"),
    ("hybrid dp 2 x tp 2", f"--dp 2 --tp 2 {WIDE}"),
    ("simulated 10GbE link, dp 2", "--workers 2 --link 10gbe"),
    ("slow node (speeds 1, 0.5), dp 2", f"--workers 2 {WIDE} --node-speeds 1,0.5"),
    ("slow node, static balance", f"--workers 2 {WIDE} --node-speeds 1,0.5 --balance static"),
    ("MPI backend, dp 2", f"--workers 2 {WIDE} --backend mpi"),
]


def config(flags: str, epochs: int):
    args = cli.build_parser().parse_args(["train", *shlex.split(flags), "--epochs", str(epochs),
                                          "--quiet"])
    return cli.config_from_args(args)


def predicted(cfg, profile: dict) -> dict:
    """Samples/s of a whole epoch: the full batches and the last, partial one."""
    options = SimpleNamespace(hardware=profile)
    hw = predict.hardware(cfg, options)
    model = predict.workload(cfg, options)
    samples, _ = predict.dataset_shape(cfg)
    full, rest = divmod(samples, cfg.batch_size)
    layout = predict.layout(cfg, options)
    main = sim.predict(model, layout, hw)
    seconds = full * main["step_seconds"]
    if rest:
        try:
            seconds += sim.predict(model, layout.with_(batch_size=rest), hw)["step_seconds"]
        except ValueError:  # a last batch that does not split evenly: in proportion
            seconds += main["step_seconds"] * rest / cfg.batch_size
    return {"samples_per_second": samples / seconds, "breakdown": main["breakdown"]}


def median_profile(profiles: list):
    """Leaf by leaf, the median of several calibrations (numbers, and lists of numbers)."""
    first = profiles[0]
    if isinstance(first, dict):
        return {k: median_profile([p[k] for p in profiles]) if all(k in p for p in profiles)
                else first[k] for k in first}
    if isinstance(first, list) and first and all(isinstance(p, list) and len(p) == len(first)
                                                  for p in profiles):
        return [median_profile([p[i] for p in profiles]) for i in range(len(first))]
    if isinstance(first, (int, float)) and not isinstance(first, bool) and all(
            isinstance(p, (int, float)) for p in profiles):
        return statistics.median(profiles)
    return first


def measured(cfg) -> float:
    metrics = ml.train(cfg)
    rates = [e["samples_per_second"] for e in metrics["epochs"][1:]]
    return statistics.median(rates)


def load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields), idle


def busy_fraction(interval_s: float = 0.5) -> float | None:
    """The share of all cores that other processes kept busy over ``interval_s``."""
    a = _cpu_times()
    time.sleep(interval_s)
    b = _cpu_times()
    if a is None or b is None or b[0] == a[0]:
        return None
    return 1.0 - (b[1] - a[1]) / (b[0] - a[0])


def wait_for_quiet(max_busy: float, wait_s: float) -> float | None:
    """Wait (up to ``wait_s``) until other processes use less than ``max_busy`` of the cores
    twice in a row; the last busy share seen."""
    deadline, quiet, busy = time.time() + wait_s, 0, None
    while time.time() < deadline:
        busy = busy_fraction()
        if busy is None:
            return None
        quiet = quiet + 1 if busy < max_busy else 0
        if quiet >= 2:
            break
    return busy


def plot(rows, path: str, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10.5, 6))
    xs = [r["measured"] for r in rows]
    ys = [r["predicted"] for r in rows]
    lo, hi = min(xs + ys) / 1.5, max(xs + ys) * 1.5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
    ax.fill_between([lo, hi], [lo * 0.85, hi * 0.85], [lo * 1.15, hi * 1.15], color="0.9",
                    label="±15 %")
    for i, r in enumerate(rows, 1):
        ax.errorbar(r["measured"], r["predicted"], xerr=[[r["measured"] - r["min"]],
                                                          [r["max"] - r["measured"]]],
                    fmt="o", ms=5, capsize=2,
                    label=f"{i}. {r['name']} ({100 * r['error']:+.0f} %)")
        ax.annotate(str(i), (r["measured"], r["predicted"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured samples/s (median; bars: min-max over rounds)")
    ax.set_ylabel("predicted samples/s (minilepton simulate)")
    ax.set_title(note, fontsize=8)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, borderaxespad=0)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4, help="per run; the first is skipped")
    parser.add_argument("--profile", help="a calibrated profile JSON (default: calibrate now)")
    parser.add_argument("--only", default="", help="comma-separated layout numbers (1-based)")
    parser.add_argument("--max-busy", type=float, default=0.2,
                        help="before each run, wait until other processes use less than this "
                        "share of the cores")
    parser.add_argument("--wait-s", type=float, default=120.0,
                        help="the longest wait for a quiet machine before each run")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--figure", help="write predicted against measured here (PNG)")
    args = parser.parse_args()
    chosen = [LAYOUTS[int(i) - 1] for i in args.only.split(",") if i] or LAYOUTS
    t0, load0 = time.time(), load()
    fixed = None
    if args.profile:
        with open(args.profile) as f:
            fixed = json.load(f)
    runs = {name: [] for name, _ in chosen}
    loads, busy_seen, profiles = [], [], []
    for rnd in range(args.rounds):
        if fixed is None:  # a calibration per round, interleaved with the runs
            wait_for_quiet(args.max_busy, args.wait_s)
            profiles.append(calibrate.calibrate(log=lambda line: print(line, file=sys.stderr)))
        for name, flags in chosen:
            busy = wait_for_quiet(args.max_busy, args.wait_s)
            busy_seen.append(busy)
            before = load()
            runs[name].append(measured(config(flags, args.epochs)))
            loads.append((before, load()))
            print(f"round {rnd + 1}: {name:34} {runs[name][-1]:10.0f} samples/s (other "
                  f"processes {100 * (busy or 0):.0f} % of the cores before; load "
                  f"{loads[-1][0]:.2f} -> {loads[-1][1]:.2f})", file=sys.stderr, flush=True)
    profile = fixed if fixed is not None else median_profile(profiles)
    rows = []
    for name, flags in chosen:
        p = predicted(config(flags, args.epochs), profile)
        m = statistics.median(runs[name])
        rows.append({"name": name, "command": f"minilepton train {flags}",
                     "predicted": p["samples_per_second"], "measured": m,
                     "min": min(runs[name]), "max": max(runs[name]), "rounds": runs[name],
                     "error": p["samples_per_second"] / m - 1, "breakdown": p["breakdown"]})
    errors = [abs(r["error"]) for r in rows]
    all_loads = [x for pair in loads for x in pair if x is not None]
    summary = {"median_abs_error": statistics.median(errors), "max_abs_error": max(errors),
               "load_average": {"min": min(all_loads), "median": statistics.median(all_loads),
                                "max": max(all_loads), "at_start": load0},
               "busy_before_runs": {"median": statistics.median(b for b in busy_seen if b is not None)
                                    if any(b is not None for b in busy_seen) else None,
                                    "max": max((b for b in busy_seen if b is not None),
                                               default=None)},
               "machine": profile.get("machine"), "seconds": time.time() - t0,
               "rounds": args.rounds, "epochs": args.epochs}
    print(f"\n{'layout':34} {'predicted':>10} {'measured':>10} {'error':>7}")
    for r in rows:
        print(f"{r['name']:34} {r['predicted']:10.0f} {r['measured']:10.0f} "
              f"{100 * r['error']:+6.1f}%")
    print(f"median |error| {100 * summary['median_abs_error']:.1f} %, largest "
          f"{100 * summary['max_abs_error']:.1f} %; load average "
          f"{summary['load_average']['min']:.2f}-{summary['load_average']['max']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "rows": rows, "profile": profile}, f, indent=1)
    if args.figure:
        cores = (profile.get("machine") or {}).get("cores")
        plot(rows, args.figure, f"minilepton simulate vs measured, {cores} cores, load average "
                                f"{summary['load_average']['median']:.1f}; median |error| "
                                f"{100 * summary['median_abs_error']:.0f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
