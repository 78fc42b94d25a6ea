"""The prediction as a table a person can read: each line, its seconds, and the formula behind it.

``prediction_text(p)`` prints one step's breakdown (which adds up to the step), the
throughput, the model FLOP/s per device and the memory per device; ``search_text(r)`` prints
the ranked layouts of a search. Both take the plain dicts that ``step.predict`` and
``search.search`` return (the JSON of ``minilepton simulate --json``).
"""

from __future__ import annotations

FORMULAS = {
    "compute_s": "Σ products 2mkn / rate(m,k,n) + memory-bound bytes / bandwidth (+ engine "
                 "Python per layer), busiest stage, all micro-batches",
    "recompute_s": "the forward again inside backward (--recompute)",
    "tensor/allreduce": "tensor group: calls × all-reduce(bytes, tp), α-β or measured a + b·N",
    "tensor/allgather": "tensor group: the last column layer's output gathered",
    "pipeline/send": "activations and gradients between stages, a + b·N per message",
    "data/allreduce": "data group: Σ buckets all-reduce(bucket, dp), hierarchical over nodes",
    "data/reduce_scatter": "ZeRO: gradients reduce-scattered over the data group",
    "data/allgather": "ZeRO: parameters all-gathered (top-k: sparse gradients gathered)",
    "bubble_s": "pipeline: replayed flush (schedules.replay) − busiest stage's work",
    "stragglers_s": "slow nodes: max over ranks of compute / speed − the same at full speed",
    "optimizer_s": "update of this device's (ZeRO-sharded) parameters, memory-bound",
    "engine_s": "the engine's Python per step and per pass, slicing the batch",
    "shared_cores_s": "more workers than cores: Σ CPU work / cores + messages − the rest",
}
LABELS = {"compute_s": "compute", "recompute_s": "recompute", "bubble_s": "pipeline bubble",
          "stragglers_s": "stragglers", "optimizer_s": "optimizer", "engine_s": "engine",
          "shared_cores_s": "shared cores"}


def seconds(t: float) -> str:
    """``0.00123`` -> ``"1.23 ms"``."""
    if abs(t) < 1e-9:
        return "0 s"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if abs(t) >= scale or unit == "µs":
            return f"{t / scale:.3g} {unit}"
    return f"{t:.3g} s"


def gib(nbytes: float) -> str:
    if nbytes >= 2 ** 30:
        return f"{nbytes / 2 ** 30:.2f} GiB"
    return f"{nbytes / 2 ** 20:.1f} MiB"


def _rows(p: dict) -> list[tuple[str, float, str]]:
    bd = p["breakdown"]
    rows = []
    for key in ("compute_s", "recompute_s"):
        rows.append((LABELS[key], bd[key], FORMULAS[key]))
    for name, value in sorted(bd["communication_s"].items()):
        rows.append((name, value, FORMULAS.get(name, "")))
    for key in ("bubble_s", "stragglers_s", "optimizer_s", "engine_s", "shared_cores_s"):
        rows.append((LABELS[key], bd[key], FORMULAS[key]))
    return [r for r in rows if r[1] > 0 or r[0] == "compute"]


def prediction_text(p: dict) -> str:
    lay = p["layout"]
    lines = [f"{p['model']} ({p['parameters'] / 1e6:,.1f} M parameters) on {p['hardware']}",
             f"layout: dp {lay['dp']} × tp {lay['tp']} × pp {lay['pp']} = {p['devices']} "
             f"devices; batch {lay['batch_size']} in {lay['micro_batches']} micro-batch(es) of "
             f"{lay['micro_batch_size']:g} per replica, {lay['schedule']}, ZeRO {lay['zero']}, "
             f"{lay['precision']}" + (", recompute" if lay["recompute"] else "")
             + (f", {lay['grad_accum']} passes per step" if lay["grad_accum"] > 1 else ""), ""]
    lines.append(f"{'step':22} {seconds(p['step_seconds']):>10}   = the lines below")
    for name, value, formula in _rows(p):
        share = 100 * value / p["step_seconds"] if p["step_seconds"] else 0.0
        lines.append(f"  {name:20} {seconds(value):>10} {share:5.1f} %  {formula}")
    lines.append("")
    lines.append(f"throughput             {p['samples_per_second']:,.1f} samples/s"
                 + (f", {p['tokens_per_second']:,.0f} tokens/s" if "tokens_per_second" in p else "")
                 + (f"; an epoch {seconds(p['epoch_seconds'])}" if "epoch_seconds" in p else ""))
    mfu = f" ({100 * p['mfu']:.1f} % of peak)" if p.get("mfu") else ""
    lines.append(f"model FLOP/s per device {p['tflops_per_device']:.4g} TFLOP/s{mfu} "
                 "= 3 × forward FLOPs (+ the recomputed forward) × samples / step / devices")
    m = p["memory"]
    lines.append(f"memory per device      {gib(m['total_bytes'])} of {gib(m['capacity_bytes'])}: "
                 + ("fits" if m["fits"] else "DOES NOT FIT"))
    lines.append("  " + ", ".join(f"{k.replace('_bytes', '').replace('_', ' ')} {gib(m[k])}"
                                  for k in ("parameters_bytes", "gradients_bytes",
                                            "optimizer_bytes", "activations_peak_bytes",
                                            "buffers_bytes", "reserved_bytes")))
    return "\n".join(lines)


def search_text(r: dict, top: int = 15) -> str:
    lines = [(f"{r['model']} on {r['devices']} devices of {r['hardware']}: batch "
              f"{r['batch_size']}, {r['precision']}, {r['schedule']}"),
             f"{r['candidates']} layouts tried, {r['fitting']} fit in memory"
             + (f"; the best {min(top, len(r['layouts']))}:" if r["layouts"] else "."), ""]
    if not r["layouts"]:
        hint = "nothing fits: try more devices, ZeRO, recompute or a smaller micro-batch"
        return "\n".join([*lines, hint])
    head = (f"{'rank':>4} {'dp':>5} {'tp':>3} {'pp':>4} {'micro':>6} {'zero':>4} {'recomp':>6} "
            f"{'samples/s':>11} {'TFLOP/s':>8} {'step':>9} {'bubble':>9} {'comm':>9} {'memory':>10}")
    lines.append(head)
    for i, x in enumerate(r["layouts"][:top], 1):
        lines.append(f"{i:>4} {x['dp']:>5} {x['tp']:>3} {x['pp']:>4} {x['micro_batch_size']:>6g} "
                     f"{x['zero']:>4} {'yes' if x['recompute'] else 'no':>6} "
                     f"{x['samples_per_second']:>11,.2f} {x['tflops_per_device']:>8.1f} "
                     f"{seconds(x['step_seconds']):>9} {seconds(x['bubble_s']):>9} "
                     f"{seconds(x['communication_s']):>9} {gib(x['memory_total_bytes']):>10}")
    return "\n".join(lines)
