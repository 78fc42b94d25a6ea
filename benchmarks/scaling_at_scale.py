"""The article's questions at scale, answered by the cost model: speedup and efficiency against
devices, from 1 to about 10,000, for the article's MLP and for a 175B GPT.

- **The article's MLP** (784-128-10, Adam), data parallel, strong scaling (a global batch of
  16,384 split over P devices), each device this machine's measured compute (one worker of
  ``minilepton calibrate``'s profile) and the devices joined by a named link: InfiniBand HDR,
  10 Gigabit Ethernet, 1 Gigabit Ethernet. A marker shows where the all-reduce first takes
  longer than the computation.
- **GPT-3 175B** (96 layers, width 12288, 96 heads, sequence 2048, batch 1536, bf16, 1F1B) on
  A100 80GB nodes of 8 with InfiniBand HDR: data parallel (ZeRO 3, the only way it fits),
  tensor parallel (tp = P up to 32, across nodes beyond 8, the rest data parallel with ZeRO 1),
  pipeline parallel (pp = P up to 32, the rest likewise), and 3D (the best layout ``--search``
  finds at each P); the 3D search again with 100 Gigabit Ethernet between nodes. Each point is
  the fastest micro-batch (1, 2, 4) and recomputation choice that fits.

    python benchmarks/scaling_at_scale.py --figure figures/scaling_at_scale.png \\
        --json benchmarks/scaling_at_scale.json

Nothing is written unless told where. ``--profile PATH`` takes a calibrated profile (default:
this machine's cached one, calibrated first if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from minilepton import sim
from minilepton.engine.calibrate import load_or_calibrate
from minilepton.sim.search import search

MLP_BATCH = 16384
MLP_DEVICES = [2 ** i for i in range(14)]                    # 1 … 8192
MLP_LINKS = {"InfiniBand HDR": "ib-hdr", "10 GbE": "ethernet-10g", "1 GbE": "20,1"}
GPT = {"layers": 96, "hidden": 12288, "heads": 96, "seq_len": 2048, "vocab": 51200}
GPT_BATCH = 1536
GPT_DEVICES = [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def mlp_curves(profile: dict) -> dict:
    model = sim.mlp([784, 128, 10])
    out = {}
    for label, spec in MLP_LINKS.items():
        hw = sim.hardware(profile, link_spec=spec, separate=True)
        rows = []
        for P in MLP_DEVICES:
            p = sim.predict(model, sim.Layout(dp=P, batch_size=MLP_BATCH, blas_threads=1), hw)
            comm = sum(p["breakdown"]["communication_s"].values())
            rows.append({"devices": P, "samples_per_second": p["samples_per_second"],
                         "compute_s": p["breakdown"]["compute_s"], "communication_s": comm,
                         "step_s": p["step_seconds"]})
        out[label] = rows
    return out


def _gpt_point(model, hw, base, P, kind) -> dict | None:
    if kind == "3D":
        best = search(model, P, hw, base)["layouts"]
        if not best:
            return None
        b = best[0]
        return {"devices": P, "samples_per_second": b["samples_per_second"],
                "layout": f"dp {b['dp']} tp {b['tp']} pp {b['pp']} mb {b['micro_batch_size']:g} "
                          f"zero {b['zero']}{' rc' if b['recompute'] else ''}"}
    split = max(d for d in range(1, min(P, 32) + 1) if P % d == 0 and GPT["heads"] % d == 0)
    tp, pp, zero = ((split, 1, 1) if kind == "tensor" else (1, split, 1) if kind == "pipeline"
                    else (1, 1, 3))
    dp = P // (tp * pp)
    best = None
    for mbs in (1, 2, 4):
        if GPT_BATCH % (dp * mbs):
            continue
        for recompute in (False, True):
            layout = base.with_(dp=dp, tp=tp, pp=pp, zero=zero, recompute=recompute,
                                micro_batches=GPT_BATCH // (dp * mbs))
            p = sim.predict(model, layout, hw)
            if p["memory"]["fits"] and (best is None or p["samples_per_second"] > best["samples_per_second"]):
                best = {"devices": P, "samples_per_second": p["samples_per_second"],
                        "layout": f"dp {dp} tp {tp} pp {pp} mb {mbs} zero {zero}"
                                  f"{' rc' if recompute else ''}"}
    return best


def gpt_curves() -> dict:
    model = sim.gpt(**{k: GPT[k] for k in ("layers", "hidden", "heads", "seq_len", "vocab")})
    base = sim.Layout(batch_size=GPT_BATCH, precision="bf16", schedule="1f1b")
    out = {}
    for label, kind, network in (("data (ZeRO 3)", "data", None), ("tensor", "tensor", None),
                                 ("pipeline", "pipeline", None), ("3D, InfiniBand HDR", "3D", None),
                                 ("3D, 100 GbE", "3D", "ethernet-100g")):
        hw = sim.hardware("a100-80gb", inter=network)
        rows = []
        for P in GPT_DEVICES:
            point = _gpt_point(model, hw, base, P, kind)
            if point:
                rows.append(point)
        out[label] = rows
        print(f"{label}: " + ", ".join(f"{r['devices']}: {r['samples_per_second']:.1f}"
                                      for r in rows), file=sys.stderr, flush=True)
    return out


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    (a, b), (c, d) = axes
    for label, rows in result["mlp"].items():
        xs = [r["devices"] for r in rows]
        base = rows[0]["samples_per_second"]
        line, = a.plot(xs, [r["samples_per_second"] / base for r in rows], "o-", ms=3,
                       label=label)
        c.plot(xs, [r["samples_per_second"] / base / r["devices"] for r in rows], "o-", ms=3,
               color=line.get_color(), label=label)
        bend = next((r for r in rows if r["communication_s"] > r["compute_s"]), None)
        if bend:
            a.plot(bend["devices"], bend["samples_per_second"] / base, "kx", ms=9)
    a.plot(MLP_DEVICES, MLP_DEVICES, "k--", lw=1, label="ideal")
    a.set_title(f"the article's MLP 784-128-10, data parallel, batch {MLP_BATCH}\n(x: the "
                "all-reduce outlasts the computation)", fontsize=9)
    for label, rows in result["gpt"].items():
        if not rows:
            continue
        xs = [r["devices"] for r in rows]
        line, = b.plot(xs, [r["samples_per_second"] for r in rows], "o-", ms=3, label=label)
        d.plot(xs, [r["samples_per_second"] / r["devices"] for r in rows], "o-", ms=3,
               color=line.get_color(), label=label)
    b.set_title(f"GPT-3 175B, batch {GPT_BATCH}, A100 80GB, 8 per node (samples/s)", fontsize=9)
    c.set_title("MLP: efficiency (speedup / devices)", fontsize=9)
    d.set_title("GPT-3 175B: samples/s per device (the flat part is linear scaling)", fontsize=9)
    for ax in (a, b, c, d):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set_xlabel("devices")
        ax.legend(fontsize=7)
    a.set_ylabel("speedup over one device")
    b.set_ylabel("samples/s")
    c.set_ylabel("efficiency")
    d.set_ylabel("samples/s per device")
    fig.suptitle("minilepton simulate at scale (predictions)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="a calibrated profile JSON (default: the cached one)")
    parser.add_argument("--json", help="write the curves here")
    parser.add_argument("--figure", help="write the figure here (PNG)")
    args = parser.parse_args()
    t0 = time.time()
    if args.profile:
        with open(args.profile) as f:
            profile = json.load(f)
    else:
        profile, _ = load_or_calibrate(log=lambda line: print(line, file=sys.stderr))
    result = {"mlp": mlp_curves(profile), "gpt": gpt_curves(),
              "machine": profile.get("machine"), "seconds": time.time() - t0}
    for label, rows in result["mlp"].items():
        bend = next((r["devices"] for r in rows if r["communication_s"] > r["compute_s"]), None)
        best = max(rows, key=lambda r: r["samples_per_second"])
        print(f"MLP over {label}: the all-reduce outlasts the computation from {bend} devices; "
              f"fastest at {best['devices']} ({best['samples_per_second']:,.0f} samples/s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.figure:
        plot(result, args.figure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
