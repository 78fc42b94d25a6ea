"""Which memory techniques combine with which layouts: one line for each pair that cannot.

ZeRO, recomputation, mixed precision and gradient accumulation compose with each other and with
data, tensor and pipeline parallelism, except where a line below says why not. The engine asks
before any worker starts (``engine.run.check``); ``ParallelStrategy`` asks again for Python
callers. Each reason names the flags, so the message reads the same from the command line.
"""

from __future__ import annotations


def memory_conflict(*, zero: int = 0, precision: str = "fp32", grad_accum: int = 1,
                    batch_size: int | None = None, dp: int = 1, pp: int = 1,
                    sync_every: int = 1, compress: str | None = "none", overlap: bool = False,
                    device: str = "cpu") -> str | None:
    """The reason these settings cannot run together, or None."""
    compressed = compress not in (None, "none")
    if zero >= 2 and pp > 1:
        return ("--zero 2 and 3 reduce-scatter the gradients as each backward ends, and a "
                "pipeline runs one backward per micro-batch; use --zero 1 with --pp")
    if zero and sync_every > 1:
        return ("--zero shards the optimizer across the data group; local SGD (--sync-every > 1) "
                "steps a whole replica on each worker")
    if zero and compressed:
        return "--compress applies to the gradient all-reduce; --zero reduce-scatters instead"
    if zero and overlap:
        return "overlap applies to the gradient all-reduce; --zero reduce-scatters instead"
    if zero and device == "gpu":
        return "--zero runs on the CPU; use --device cpu"
    if precision != "fp32" and sync_every > 1:
        return (f"local SGD (--sync-every > 1) averages the model's parameters; with --precision "
                f"{precision} the optimizer steps float32 masters, which it would not average")
    if precision == "bf16" and device == "gpu":
        return ("--precision bf16 needs ml_dtypes' bfloat16, which CuPy arrays cannot hold; "
                "use --precision fp16 on a GPU")
    if precision != "fp32" and compressed:
        return (f"--compress works on float32/float64 gradients; with --precision {precision} "
                "they are 16-bit already")
    if batch_size is not None and grad_accum > max(batch_size // dp, 1):
        return (f"--grad-accum {grad_accum} cuts each worker's {batch_size // dp or 1} samples "
                "of a batch into more micro-steps than samples; lower it or raise --batch-size")
    return None
