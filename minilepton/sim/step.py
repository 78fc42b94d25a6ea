"""One training step, predicted: the parts, how they add up, and what they make per second.

    step = K · (flush + stragglers) + data-parallel sync (exposed) + optimizer + engine
         [ + the wait for shared cores, on a measured machine ]

- **flush**: one pass of the global batch through the pipeline, replayed from the schedule
  (``pipeline.flush``) with each stage's forward and backward seconds per micro-batch
  (``compute.stage_time``; tensor-parallel messages included). Its busiest stage's work is
  ``compute`` (+ ``recompute``, tensor messages, pipeline sends); the rest is ``bubble``.
- **stragglers**: node speeds s_r stretch each device's compute by 1/s_r; a tensor group moves
  at its slowest member, a pipeline stage waits for its slowest stage, the step for its slowest
  data replica (max over ranks). ``--balance`` gives replicas samples in proportion to speed.
- **data-parallel sync** (group of dp ranks, ``stride`` tp·pp; on a measured profile plus the
  group's measured cost inside a real step, ``compute.in_context``): buckets of ``bucket_bytes``
  all-reduced (ZeRO 1-2: reduce-scatter the gradients, all-gather the parameters; ZeRO 3: per
  pass all-gather the parameters twice and reduce-scatter the gradients); ``--compress``
  shrinks the bytes; ``--sync-every K`` averages parameters every K steps instead. With overlap,
  only what outlasts the last micro-batch's backward is exposed (at least the last bucket).
- **optimizer**: memory-bound update of the device's (ZeRO-sharded) parameters.
- **engine**: the measured Python cost per step (the loop, slicing the batch).
- **shared cores**: more workers than cores cannot compute at once: the step lasts at least
  their CPU work over the cores, plus the communication.

Throughput: samples/s = K·B / step; model FLOP/s per device = FLOPs of the samples (forward and
backward, 3× forward, plus the recomputed forward when recomputing, the convention of the
Megatron-LM papers) / step / devices.
"""

from __future__ import annotations

from ..parallel.compression import parse_compress
from ..parallel.data_parallel import bucket_layout
from . import memory, pipeline
from .accelerator import BYTES
from .compute import in_context, slowdown, stage_time

GPT_BUCKET_PARAMS = 40_000_000  # Megatron-LM's default gradient bucket (parameters)


def _threads(layout, hw) -> int:
    if layout.blas_threads:
        return int(layout.blas_threads)
    cores = hw.cores or 1
    return cores if layout.world == 1 else max(1, cores // layout.world)


def _speeds(layout) -> list[list[float]] | None:
    """speed[d][s]: replica d's stage s, the slowest of its tensor group, relative to the fastest
    device (rank = d·pp·tp + s·tp + t, the code's grid)."""
    if not layout.node_speeds:
        return None
    fastest = max(layout.node_speeds)
    tp, pp = layout.tp, layout.pp
    return [[min(layout.node_speeds[d * pp * tp + s * tp + t] for t in range(tp)) / fastest
             for s in range(pp)] for d in range(layout.dp)]


def _boundary_bytes(workload, stages, layout, itemsize: int) -> list[float]:
    """Bytes of the activation sent from stage s to s+1 (per micro-batch)."""
    out = []
    for s in range(layout.pp - 1):
        first = stages[s + 1][0].shard(1, itemsize)
        per_sample = first.inputs if workload.kind == "gpt" else first.gemms[0][1] * itemsize
        if workload.kind == "gpt" and layout.tp > 1:
            per_sample /= layout.tp  # Megatron-LM's scatter/gather of the boundary activation
        out.append(per_sample * layout.micro_batch_size)
    return out


def _flush(times, layout, hw, boundary, samples_scale: float = 1.0) -> dict:
    net = hw.network("model")
    crosses = net.spans_nodes(layout.pp, layout.tp)
    sync = in_context(hw, "pp", layout.pp) if layout.pp > 1 else 0.0
    fwd = [t.fwd + sync / 2 for t in times]
    bwd = [t.bwd + sync / 2 for t in times]
    latency = 0.0
    for s, nbytes in enumerate(boundary):
        t = net.p2p(nbytes * samples_scale, crosses)
        if hw.sender_pays:  # a worker's send copies (and, on a simulated link, sleeps)
            fwd[s] += t
            bwd[s + 1] += t
        else:
            latency = max(latency, t)
    result = pipeline.flush(layout.schedule, layout.micro_batches, fwd, bwd, latency,
                            layout.virtual_stages)
    result["send_s"] = layout.micro_batches * sync
    if hw.sender_pays and boundary:
        busiest = max(range(len(fwd)), key=lambda s: fwd[s] + bwd[s])
        sends = (busiest < len(boundary)) + (busiest > 0)
        result["send_s"] += layout.micro_batches * sends * net.p2p(
            max(boundary) * samples_scale, crosses)
    result["busiest"] = max(range(len(fwd)), key=lambda s: fwd[s] + bwd[s])
    return result


def _data_sync(stage_shards, layout, hw, workload, times) -> dict:
    """Exposed seconds of the data-parallel sync per step, by collective (the slowest stage).
    With overlap, bucket all-reduces hide behind the last micro-batch's backward, and ZeRO-3's
    gathers (prefetched a layer ahead) behind all of the step's compute but one layer's."""
    dp = layout.dp
    if dp == 1:
        return {}
    net = hw.network("data")
    stride = layout.tp * layout.pp
    mixed = layout.precision != "fp32"
    grad_b = 8 if layout.dtype == "float64" else 4
    param_b = 2 if mixed else grad_b
    method, ratio = parse_compress(layout.compress)
    worst: dict = {}
    for shards, t in zip(stage_shards, times):
        last_bwd = t.bwd
        tensors = [n for s in shards for n in s.params]
        out: dict = {}
        if layout.zero >= 3:
            gather = 2 * layout.grad_accum * net.allgather(param_b * sum(tensors), dp, stride)
            scatter = layout.grad_accum * net.reduce_scatter(grad_b * sum(tensors), dp, stride)
            out = {"data/allgather": gather, "data/reduce_scatter": scatter}
        elif layout.zero >= 1:  # ZeRO 2 reduce-scatters as each pass's backward ends
            passes = layout.grad_accum if layout.zero == 2 else 1
            out = {"data/reduce_scatter": passes * net.reduce_scatter(grad_b * sum(tensors), dp,
                                                                      stride),
                   "data/allgather": net.allgather(param_b * sum(tensors), dp, stride)}
        else:
            limit = layout.bucket_bytes
            if workload.kind == "gpt":
                limit = max(limit, GPT_BUCKET_PARAMS * grad_b)
            nbytes = [grad_b * n for n in tensors]
            buckets = [sum(nbytes[i] for i in group)
                       for group in bucket_layout(nbytes, [0] * len(nbytes), limit)]
            if method == "fp16":
                calls = [net.allreduce(b / 2, dp, stride) for b in buckets]
            elif method == "topk":
                calls = [net.allgather(dp * 2 * max(1, round(ratio * b / grad_b)) * grad_b, dp,
                                       stride) for b in buckets]
            else:
                calls = [net.allreduce(b, dp, stride) for b in buckets]
            total = sum(calls) / layout.sync_every
            if layout.overlap and calls:
                total = max(total - last_bwd, calls[-1])
            op = "data/allgather" if method == "topk" else "data/allreduce"
            out = {op: total}
        if layout.overlap and layout.zero >= 3:
            hidden = layout.grad_accum * layout.micro_batches * (t.fwd + t.bwd)
            layers = max(1, len(shards))
            out = {k: max(v - hidden, v / layers) for k, v in out.items()}
        if sum(out.values()) > sum(worst.values()):
            worst = out
    return worst


def _optimizer_s(stage_shards, layout, hw) -> float:
    dev = hw.compute
    shard_by = layout.dp if layout.zero >= 1 else 1
    worst = 0.0
    for shards in stage_shards:
        tensors = [n / shard_by for s in shards for n in s.params]
        if dev.kind == "measured":
            t = dev.optimizer_seconds(layout.optimizer, layout.dtype, tensors)
            t += dev.engine["tensor_s"] * len(tensors)
            t += dev.memory_seconds(sum(s.memory_step for s in shards),
                                    array_bytes=max(s.memory_step for s in shards) / 4 or 1)
        else:
            per_param = 30.0 if layout.optimizer == "adam" else 16.0
            t = dev.memory_seconds(per_param * sum(tensors))
        worst = max(worst, t * slowdown(hw, layout.world, _kind(layout)))
    return worst


def _kind(layout) -> str:
    """The parallelism that sets how often workers wait for each other: pipeline, tensor, data."""
    return "pp" if layout.pp > 1 else "tp" if layout.tp > 1 else "dp"


def memory_of(workload, layout, hw, shards=None, boundary=None) -> dict:
    """Bytes per device (``memory.device_memory``) of ``workload`` laid out as ``layout``."""
    itemsize = BYTES[layout.compute_dtype]
    if shards is None:
        stages = workload.stages(layout.pp)
        shards = [[layer.shard(layout.tp, itemsize) for layer in stage] for stage in stages]
        boundary = _boundary_bytes(workload, stages, layout, itemsize)
    M, P, v = layout.micro_batches, layout.pp, layout.virtual_stages
    parts = []
    for s, sh in enumerate(shards):
        message = boundary[min(s, len(boundary) - 1)] if boundary else 0.0
        parts.append(memory.stage_memory(sh, layout, pipeline.held(layout.schedule, M, P, s, v),
                                         layout.micro_batch_size, message, s == P - 1))
    capacity = hw.memory_bytes / (layout.world if hw.cores else 1)
    return memory.device_memory(parts, getattr(hw.compute, "reserved_bytes", 0.0), capacity)


def predict(workload, layout, hw) -> dict:
    """The predicted step of ``workload`` laid out as ``layout`` on ``hw`` (a plain dict)."""
    layout.check()
    # a CPU has no 16-bit products: the code runs them in float32 and rounds (autograd/lowp.py)
    dtype = layout.dtype if hw.kind == "measured" else layout.compute_dtype
    itemsize = BYTES[dtype]
    stages = workload.stages(layout.pp)
    shards = [[layer.shard(layout.tp, itemsize) for layer in stage] for stage in stages]
    threads = _threads(layout, hw)
    mb = layout.micro_batch_size

    def times_for(scale: float = 1.0):
        return [stage_time(sh, mb * scale, hw, dtype, layout.tp, layout.recompute, threads,
                           layout.world, _kind(layout)) for sh in shards]

    times = times_for()
    boundary = _boundary_bytes(workload, stages, layout, itemsize)
    base = _flush(times, layout, hw, boundary)
    speeds = _speeds(layout)
    flush_s = base["makespan_s"]
    if speeds:
        weights = [1.0 / layout.dp] * layout.dp
        if layout.balance != "none":
            total = sum(min(row) for row in speeds)
            weights = [min(row) / total for row in speeds]
        slowest = 0.0
        for d, row in enumerate(speeds):
            scale = weights[d] * layout.dp
            scaled = [t.scaled(row[s]) for s, t in enumerate(times_for(scale) if scale != 1 else times)]
            slowest = max(slowest, _flush(scaled, layout, hw, boundary, scale)["makespan_s"])
        flush_s = max(flush_s, slowest)
    K, M = layout.grad_accum, layout.micro_batches
    b = base["busiest"]
    t_b = times[b]
    compute_s = K * M * (t_b.forward_s + t_b.backward_s)
    recompute_s = K * M * t_b.recompute_s
    comm = {k: K * M * v for k, v in t_b.messages.items()}
    if base["send_s"]:
        comm["pipeline/send"] = K * base["send_s"]
    bubble_s = K * base["makespan_s"] - compute_s - recompute_s - sum(comm.values())
    for k, v in _data_sync(shards, layout, hw, workload, times).items():
        comm[k] = comm.get(k, 0.0) + v
    if layout.dp > 1 and in_context(hw, "dp", layout.dp):
        data_keys = sorted(k for k in comm if k.startswith("data/"))
        key = "data/allreduce" if not data_keys or "data/allreduce" in comm else data_keys[0]
        comm[key] = comm.get(key, 0.0) + in_context(hw, "dp", layout.dp)
    optimizer_s = _optimizer_s(shards, layout, hw)
    engine = getattr(hw.compute, "engine", None)
    engine_s = 0.0
    if engine:
        local = layout.batch_size / layout.dp   # the loop slices this replica's rows once
        features = workload.sizes[0] if workload.sizes else 0
        slice_bytes = 2 * local * features * BYTES[layout.dtype]
        engine_s = engine["step_s"] + engine["pass_s"] + hw.compute.memory_seconds(
            slice_bytes, array_bytes=slice_bytes / 2 or 1)
        if layout.pp > 1:
            engine_s += K * M * engine.get("microbatch_s", 0.0)
    stragglers_s = K * (flush_s - base["makespan_s"])
    critical = (compute_s + recompute_s + sum(comm.values()) + max(bubble_s, 0.0) + stragglers_s
                + optimizer_s + engine_s)
    shared_s = 0.0
    if hw.cores and layout.world > hw.cores:
        work = sum(K * M * (t.forward_s + t.backward_s + t.recompute_s) for t in times)
        cpu = layout.dp * layout.tp * (work + layout.pp * (optimizer_s + engine_s)) / hw.cores
        shared_s = max(0.0, cpu + sum(comm.values()) - critical)
    step = critical + shared_s
    samples = layout.samples_per_step
    flops = workload.flops_per_sample() * samples
    if layout.recompute:
        flops += samples * sum(layer.shard(1).flops for layer in workload.layers
                               if layer.name != "logits")
    tflops = flops / step / layout.world / 1e12
    peak = hw.compute.peak_flops(layout.compute_dtype)
    mem = memory_of(workload, layout, hw, shards, boundary)
    out = {
        "model": workload.name, "parameters": workload.parameters, "hardware": hw.describe(),
        "devices": layout.world,
        "layout": {"dp": layout.dp, "tp": layout.tp, "pp": layout.pp,
                   "micro_batches": M, "micro_batch_size": mb, "batch_size": layout.batch_size,
                   "grad_accum": K, "schedule": layout.schedule,
                   "virtual_stages": layout.virtual_stages, "zero": layout.zero,
                   "recompute": layout.recompute, "precision": layout.precision},
        "step_seconds": step, "samples_per_second": samples / step,
        "tflops_per_device": tflops,
        "mfu": (tflops * 1e12 / peak) if peak else None,
        "memory": mem,
        "breakdown": {"compute_s": compute_s, "recompute_s": recompute_s,
                      "communication_s": comm, "bubble_s": max(bubble_s, 0.0),
                      "stragglers_s": stragglers_s, "optimizer_s": optimizer_s,
                      "engine_s": engine_s, "shared_cores_s": shared_s},
    }
    if workload.kind == "gpt":
        out["tokens_per_second"] = samples * workload.rows / step
    return out
