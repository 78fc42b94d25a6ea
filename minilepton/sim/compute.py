"""Seconds of one micro-batch on one pipeline stage: products, memory-bound work, messages.

For each layer shard and a micro-batch of b samples (``Shard.gemms`` rows scaled by b):

    forward   Σ t(m, k, n)                         the products
              + memory(bytes_fwd · b)              normalisation, activations, softmax, …
              + engine blocks · c_block / 3        (measured profiles: the engine's Python)
    backward  Σ [ t(k, m, n) + t(m, n, k) ]        weight and input gradients (no input
              + memory(bytes_bwd · b)              gradient for the data), same memory rule
              + engine blocks · 2 c_block / 3
    messages  Σ calls · T_op(bytes · b, tp)        the tensor group's all-reduces/all-gathers,
                                                   by phase (``collectives.Network``), plus,
                                                   on a measured profile, the group's cost in a
                                                   real step per block (``in_context``)

With recomputation each layer's forward runs again inside backward (its messages too, as in
Megatron-LM). ``t``, ``memory`` and the engine constants come from the hardware's compute
model (``accelerator.py`` or ``measured.py``); on a measured machine the compute of one of P
workers is stretched by the slowdown calibration measured for P workers (``slowdown``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def in_context(hardware, kind: str, size: int) -> float:
    """The measured cost of a group of ``size`` inside a real training step beyond what the
    collectives' lines price (``engine.layouts`` of a measured profile: per step for "dp", per
    block for "tp", per micro-batch and stage for "pp"); 0 elsewhere."""
    layouts = (getattr(hardware.compute, "engine", None) or {}).get("layouts", {})
    table = layouts.get(kind)
    if size < 2 or not table:
        return 0.0
    return float(table[min(table, key=lambda p: (abs(int(p) - size), int(p)))])


@dataclass
class StageTime:
    """One micro-batch on one stage: compute and message seconds per phase."""

    forward_s: float = 0.0
    backward_s: float = 0.0
    recompute_s: float = 0.0
    messages: dict = field(default_factory=dict)   # "tensor/allreduce" -> seconds (both phases)
    forward_messages_s: float = 0.0
    backward_messages_s: float = 0.0

    @property
    def fwd(self) -> float:
        return self.forward_s + self.forward_messages_s

    @property
    def bwd(self) -> float:
        return self.backward_s + self.recompute_s + self.backward_messages_s

    def scaled(self, speed: float) -> StageTime:
        """The same work on a device ``speed`` times as fast (messages unchanged)."""
        return StageTime(self.forward_s / speed, self.backward_s / speed,
                         self.recompute_s / speed, dict(self.messages),
                         self.forward_messages_s, self.backward_messages_s)


def slowdown(hardware, world: int, kind: str = "dp") -> float:
    """How much slower a worker computes when ``world`` workers share a measured machine than
    alone (shared caches and memory bandwidth), as calibration measured it with data
    parallelism (``engine.layouts.dp_concurrent``), or for a pipeline (``kind`` "pp") of more
    workers than cores, with a pipeline (``pp_concurrent``); 1 elsewhere."""
    layouts = (getattr(hardware.compute, "engine", None) or {}).get("layouts", {})
    table = layouts.get("dp_concurrent") or layouts.get("concurrent")
    if kind == "pp" and hardware.cores and world > hardware.cores and "pp_concurrent" in layouts:
        table = layouts["pp_concurrent"]   # stages that hand over work wait out time slices
    if world < 2 or not table:
        return 1.0
    return float(table[min(table, key=lambda p: (abs(int(p) - world), int(p)))])


def stage_time(shards, micro_batch: float, hardware, precision: str, tp: int,
               recompute: bool, threads: int = 1, world: int = 1, kind: str = "dp") -> StageTime:
    """Seconds of one micro-batch of ``micro_batch`` samples through ``shards`` on one of
    ``world`` devices of a ``kind`` layout."""
    dev = hardware.compute
    factor = slowdown(hardware, world, kind)
    net = hardware.network("model")
    engine = getattr(dev, "engine", None)
    block_s = engine["block_s"] if engine else 0.0
    tp_block_s = in_context(hardware, "tp", tp)
    out = StageTime()
    for shard in shards:
        fwd = bwd = 0.0
        for rows, k, n, batch, needs_dx in shard.gemms:
            m = rows * micro_batch
            fwd += dev.matmul_seconds(m, k, n, precision, batch, threads=threads)
            bwd += dev.matmul_seconds(k, m, n, precision, batch, threads=threads)
            if needs_dx:
                bwd += dev.matmul_seconds(m, n, k, precision, batch, threads=threads)
        array = max(shard.activations * micro_batch / 2, 1.0)
        fwd += dev.memory_seconds(shard.memory_fwd * micro_batch, array_bytes=array)
        bwd += dev.memory_seconds(shard.memory_bwd * micro_batch, array_bytes=array)
        fwd += shard.blocks * block_s / 3
        bwd += shard.blocks * 2 * block_s / 3
        if shard.messages and tp_block_s:  # the tensor group's measured cost in a real step
            out.messages["tensor/allreduce"] = out.messages.get("tensor/allreduce", 0.0) + \
                tp_block_s
            out.forward_messages_s += tp_block_s / 2
            out.backward_messages_s += tp_block_s / 2
        again = recompute and bool(shard.gemms)
        for phase, op, nbytes, calls in shard.messages:
            t = calls * getattr(net, op)(nbytes * micro_batch, tp, 1)
            repeats = 2 if again and phase == "forward" else 1
            out.messages[f"tensor/{op}"] = out.messages.get(f"tensor/{op}", 0.0) + repeats * t
            if phase == "forward":
                out.forward_messages_s += t
            if phase == "backward" or repeats == 2:
                out.backward_messages_s += t
        out.forward_s += fwd * factor
        out.backward_s += bwd * factor
        if again:
            out.recompute_s += fwd * factor
    return out
