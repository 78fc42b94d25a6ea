"""The cost model against published large-scale GPT training: predicted against reported
per-GPU throughput, for every run of ``benchmarks/published_runs.json``.

Each run names its model, hardware, layout, batch and the throughput its source reports, with
the source. The prediction is ``minilepton simulate`` on the built-in profile of the device (the
link between nodes replaced where the run's cluster had another) with the run's layout. Both
sides are compared as sequences per second per GPU: a source's TFLOP/s are turned into
sequences with the source's own FLOP count (``flops``: the Megatron-LM formula with the
recomputed forward, or model FLOPs), so the comparison does not depend on the convention.

    python benchmarks/simulate_published.py --json benchmarks/simulate_published.json

Rows of the ``limits`` set are printed apart: they are not part of the error figures, they
show what the model leaves out. Nothing is written unless ``--json`` says where.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from minilepton import sim

HERE = Path(__file__).resolve().parent


def megatron_flops_per_sequence(m: dict) -> float:
    """96 · s · l · h² · (1 + s/6h + V/16lh): one sequence, forward, recomputed forward and
    backward (Narayanan et al. 2021, eq. 3, divided by the batch)."""
    s, l, h, V = m["seq_len"], m["layers"], m["hidden"], m["vocab"]
    return 96 * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h))


def published_sequences_per_gpu(run: dict, model) -> float:
    pub = run["published"]
    if "tokens_per_second_per_gpu" in pub:
        return pub["tokens_per_second_per_gpu"] / run["model"]["seq_len"]
    per_sequence = (megatron_flops_per_sequence(run["model"]) if pub["flops"] ==
                    "megatron-recompute" else model.flops_per_sample())
    return pub["tflops_per_gpu"] * 1e12 / per_sequence


def predict_run(run: dict) -> dict:
    m = run["model"]
    model = sim.gpt(m["layers"], m["hidden"], m["heads"], m["seq_len"], m["vocab"],
                    flash_attention=m.get("flash_attention", False))
    hw_spec = run["hardware"]
    hw = sim.hardware(hw_spec["device"], inter=hw_spec.get("inter_node_link"))
    lay = run["layout"]
    dp = lay["dp"]
    layout = sim.Layout(dp=dp, tp=lay["tp"], pp=lay["pp"], batch_size=run["batch_size"],
                        micro_batches=run["batch_size"] // (dp * lay.get("grad_accum", 1)
                                                            * lay["micro_batch_size"]),
                        grad_accum=lay.get("grad_accum", 1), schedule=lay["schedule"],
                        virtual_stages=lay.get("virtual_stages", 1), zero=lay["zero"],
                        recompute=lay["recompute"], precision=lay["precision"],
                        optimizer="adam", overlap=lay.get("overlap", False))
    if layout.world != run["gpus"]:
        raise ValueError(f"{run['name']}: the layout has {layout.world} GPUs, not {run['gpus']}")
    p = sim.predict(model, layout, hw)
    predicted = p["samples_per_second"] / run["gpus"]
    published = published_sequences_per_gpu(run, model)
    return {"name": run["name"], "set": run["set"], "gpus": run["gpus"],
            "predicted_sequences_per_gpu": predicted, "published_sequences_per_gpu": published,
            "error": predicted / published - 1, "published": run["published"],
            "predicted_tflops_source_convention": predicted * (
                megatron_flops_per_sequence(m) if run["published"].get("flops") ==
                "megatron-recompute" else model.flops_per_sample()) / 1e12,
            "fits": p["memory"]["fits"], "memory_gib": p["memory"]["total_bytes"] / 2 ** 30,
            "step_seconds": p["step_seconds"], "breakdown": p["breakdown"],
            "source": run["source"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE / "published_runs.json"))
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args()
    runs = json.loads(Path(args.runs).read_text())["runs"]
    rows = [predict_run(run) for run in runs]
    print(f"{'run':28} {'GPUs':>6} {'published':>10} {'predicted':>10} {'error':>7}  unit")
    for group in ("validation", "limits"):
        if group == "limits":
            print("\noutside the model (not in the error figures):")
        for r in (r for r in rows if r["set"] == group):
            pub = r["published"]
            unit = ("TFLOP/s per GPU" if "tflops_per_gpu" in pub else "tokens/s per GPU")
            shown = (pub.get("tflops_per_gpu"), r["predicted_tflops_source_convention"]) \
                if "tflops_per_gpu" in pub else (pub["tokens_per_second_per_gpu"],
                                                 r["predicted_sequences_per_gpu"] * (
                                                     pub["tokens_per_second_per_gpu"]
                                                     / r["published_sequences_per_gpu"]))
            print(f"{r['name']:28} {r['gpus']:>6} {shown[0]:>10.4g} {shown[1]:>10.4g} "
                  f"{100 * r['error']:+6.1f}%  {unit}" + ("" if r["fits"] else "  (does not fit)"))
    errors = [abs(r["error"]) for r in rows if r["set"] == "validation"]
    summary = {"runs": len(errors), "median_abs_error": statistics.median(errors),
               "max_abs_error": max(errors),
               "within_20_percent": sum(e <= 0.20 for e in errors)}
    print(f"\n{summary['runs']} runs: median |error| {100 * summary['median_abs_error']:.1f} %, "
          f"largest {100 * summary['max_abs_error']:.1f} %")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
