"""Every layout of a model on N devices that fits in memory, ranked by predicted throughput.

The Ultra-scale playbook's procedure, done exhaustively: for every split N = dp · tp · pp
(tp at most the devices of a node and dividing the heads; pp at most the layers; dp dividing
the global batch), every micro-batch size (powers of two dividing a replica's share of the
batch; for the MLP, the micro-batch count when pp > 1), every ZeRO stage (0 only when dp = 1;
ZeRO 2-3 only without pipeline parallelism, as DeepSpeed allows) and recomputation on or off:

1. the memory per device (``step.memory_of``, cheap) rules out what does not fit;
2. the rest are predicted (``step.predict``) and sorted by samples per second (ties: less
   memory first).

Everything else (precision, optimizer, schedule, grad accumulation, links) comes from the base
layout. 1,024 devices and a 175B GPT take a few seconds: the pipeline replays are cached.
"""

from __future__ import annotations

from .step import memory_of, predict


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _powers_of_two(limit: int, cap: int = 16) -> list[int]:
    out, p = [], 1
    while p <= min(limit, cap):
        if limit % p == 0:
            out.append(p)
        p *= 2
    return out


def candidates(workload, devices: int, base, max_tp: int | None) -> list:
    """Every layout worth predicting (before the memory check)."""
    gpt = workload.kind == "gpt"
    depth = workload.shape["layers"] if gpt else len(workload.layers)
    out = []
    for tp in _divisors(devices):
        if max_tp and tp > max_tp:
            continue
        if gpt and (workload.shape["heads"] % tp or workload.shape["hidden"] % tp):
            continue
        if not gpt and tp > min(workload.sizes[1:]):
            continue
        for pp in _divisors(devices // tp):
            if pp > depth:
                continue
            dp = devices // (tp * pp)
            if base.batch_size % dp:
                continue
            share = base.batch_size // dp
            if gpt:
                splits = [share // m for m in _powers_of_two(share)]
            else:
                splits = _powers_of_two(share, 64) if pp > 1 else [1]
            for micro in splits:
                for zero in (0, 1, 2, 3) if dp > 1 else (0,):
                    if zero >= 2 and pp > 1:
                        continue
                    for recompute in (False, True):
                        out.append(base.with_(dp=dp, tp=tp, pp=pp, micro_batches=micro,
                                              zero=zero, recompute=recompute, node_speeds=None))
    return out


def search(workload, devices: int, hardware, base, limit: int | None = None) -> dict:
    """Rank the layouts of ``workload`` on ``devices`` devices of ``hardware``; ``base`` gives
    the batch size, precision, optimizer and schedule. Returns the ranked list (every layout that
    fits, or the first ``limit``) and counts."""
    if devices < 1:
        raise ValueError(f"the search needs at least one device, not {devices}")
    max_tp = hardware.devices_per_node or hardware.cores
    tried = candidates(workload, devices, base, max_tp)
    fitting = [layout for layout in tried if memory_of(workload, layout, hardware)["fits"]]
    ranked = []
    for layout in fitting:
        p = predict(workload, layout, hardware)
        ranked.append({"dp": layout.dp, "tp": layout.tp, "pp": layout.pp,
                       "micro_batches": layout.micro_batches,
                       "micro_batch_size": layout.micro_batch_size, "zero": layout.zero,
                       "recompute": layout.recompute, "step_seconds": p["step_seconds"],
                       "samples_per_second": p["samples_per_second"],
                       "tflops_per_device": p["tflops_per_device"], "mfu": p["mfu"],
                       "memory_total_bytes": p["memory"]["total_bytes"],
                       "bubble_s": p["breakdown"]["bubble_s"],
                       "communication_s": sum(p["breakdown"]["communication_s"].values())})
    ranked.sort(key=lambda r: (-r["samples_per_second"], r["memory_total_bytes"]))
    return {"model": workload.name, "devices": devices, "hardware": hardware.describe(),
            "batch_size": base.batch_size, "precision": base.precision,
            "schedule": base.schedule, "candidates": len(tried), "fitting": len(fitting),
            "layouts": ranked[:limit] if limit else ranked}
