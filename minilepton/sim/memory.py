"""Bytes per device: parameters, gradients, optimizer state, activations, buffers; does it fit?

With Φ parameters on a device (its tensor shard of its stage's layers) and N_d data-parallel
ranks (Rajbhandari et al., 2020, "ZeRO"; the Ultra-scale playbook's arithmetic):

=============  ===================================  ======================================
               fp32 training (dtype of b bytes)     mixed precision (bf16 or fp16)
=============  ===================================  ======================================
parameters     b·Φ                                  2Φ  (16-bit compute copy)
gradients      b·Φ                                  2Φ
optimizer      Adam 2b·Φ (m, v); SGD b·Φ with       Adam 12Φ (fp32 master, m, v);
               momentum, else 0                     SGD 8Φ with momentum, else 4Φ
=============  ===================================  ======================================

ZeRO stage 1 divides the optimizer state by N_d, stage 2 the gradients too, stage 3 the
parameters too (each device then gathers one layer's parameters at a time: a buffer). These
are the code's own formulas (``parallel.memory.predict``), applied to the device's tensors.

Activations: a stage keeps, per micro-batch in flight, its input and every layer's
activations (``Shard.activations``); the schedule's plan says how many micro-batches the first stage holds
(``pipeline.held``: GPipe M, 1F1B P). With recomputation only each layer's input (and the
logits) is kept, plus one layer's full activations while it is recomputed (as
``parallel.memory.predict_activations`` counts for the MLP). The peak is the largest stage's.

Buffers: pipeline messages (one activation in, one out), the largest tensor-parallel message,
gathered ZeRO-3 parameters, and what the runtime itself holds (``reserved``: CUDA context and
communication buffers on a GPU, the interpreter and NumPy in a worker process).
"""

from __future__ import annotations

from ..parallel.memory import predict as held_by_formula


def stage_memory(shards, layout, held: float, micro_batch: float, message_bytes: float,
                 final: bool = True) -> dict:
    """Bytes on one device of a stage (``final``: the last) whose layers' shards are ``shards``:
    parameters, gradients, optimizer and ZeRO's buffers by the code's own formulas
    (``parallel.memory.predict``), activations and message buffers as described above."""
    mixed = layout.precision != "fp32"
    master_b = 8 if layout.dtype == "float64" else 4
    compute_b = 2 if mixed else master_b
    states = 2 if layout.optimizer == "adam" else (1 if layout.momentum else 0)
    sizes = [n for s in shards for n in s.params]
    out = held_by_formula(sizes, layout.dp, layout.zero, compute_b, master_b, states, mixed)
    last = shards[-1].activations if final else 0.0   # the logits, which the loss keeps
    if layout.recompute:
        kept = sum(s.inputs for s in shards) + last
        working = max((s.activations for s in shards), default=0.0)
        activations = kept * micro_batch * held + working * micro_batch
    else:
        kept = shards[0].inputs + sum(s.activations for s in shards)
        activations = kept * micro_batch * held
    buffers = out["buffers_bytes"]
    if layout.pp > 1:
        buffers += 2 * message_bytes
    tp_messages = [m[2] for s in shards for m in s.messages]
    if tp_messages:
        buffers += max(tp_messages) * micro_batch
    out.update(activations_peak_bytes=activations, buffers_bytes=buffers)
    return out


KEYS = ("parameters_bytes", "gradients_bytes", "optimizer_bytes", "activations_peak_bytes",
        "buffers_bytes")


def device_memory(stage_parts: list[dict], reserved_bytes: float, capacity_bytes: float) -> dict:
    """The device that holds the most (over stages), with the total and whether it fits."""
    worst = max(stage_parts, key=lambda part: sum(part[k] for k in KEYS))
    out = {k: float(worst[k]) for k in KEYS}
    out["reserved_bytes"] = float(reserved_bytes)
    out["total_bytes"] = sum(out[k] for k in KEYS) + out["reserved_bytes"]
    out["capacity_bytes"] = float(capacity_bytes)
    out["fits"] = bool(out["total_bytes"] <= capacity_bytes)
    out["per_stage_total_bytes"] = [sum(p[k] for k in KEYS) + reserved_bytes for p in stage_parts]
    return out
