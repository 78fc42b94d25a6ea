"""Memory per rank, by kind: measured from the arrays themselves, and predicted by formulas.

The kinds (the keys of ``metrics["memory"]``):

    parameters_bytes        the model's parameters as this rank holds them
    gradients_bytes         gradients kept for the update (data parallelism's bucket buffers)
    optimizer_bytes         optimizer state (Adam's m and v, SGD's momentum) and master weights
    activations_peak_bytes  the most held for backward at any moment
    buffers_bytes           communication and staging buffers that are none of the above

Measured: ``held_bytes`` counts each byte of memory once, in the order above, from the address
ranges of the arrays (a parameter that views a flat buffer counts as part of that buffer).
Activations: every array of the recorded graph except parameters (``graph_bytes``: each op's
output, and the input), right after the forward; ``ActivationMeter`` adds what a recomputed
block holds during its backward, and what a pipeline stage holds for micro-batches in flight.
The optimizer's update temporaries (one parameter-sized scratch) are not counted.

Predicted (``predict``), the ZeRO paper's arithmetic: Ψ parameters on this rank (padded per
group to a multiple of P), P the data-parallel degree, b bytes per compute value, m per master
value, K optimizer states per parameter (Adam 2, SGD with momentum 1), c = 1 when the masters
are copies (16-bit compute), L the largest padded group (stage 3 gathers one layer at a time):

    ZeRO   parameters    gradients   optimizer          buffers
    0      bΨ            bΨ          (c + K) m Ψ        c m (largest parameter)
    1      bΨ            bΨ          (c + K) m Ψ/P      c m (largest block)
    2      bΨ            bΨ/P        (c + K) m Ψ/P      b L + c m (largest block)
    3      bΨ/P + bL     bΨ/P        (c + K) m Ψ/P      b L + c m (largest block)

A pipeline stage's activations: M micro-batches' worth for GPipe, at most P−s for 1F1B on
stage s (``ActivationMeter`` of ``pipeline``).
"""

from __future__ import annotations

import numpy as np

from ..nn import Parameter

KINDS = ("parameters_bytes", "gradients_bytes", "optimizer_bytes", "activations_peak_bytes",
         "buffers_bytes")
HELD = ("parameters", "gradients", "optimizer", "buffers")  # counted in this order


def parameter_bytes(module) -> int:
    """Bytes of ``module``'s parameters on this rank."""
    return int(sum(p.data.nbytes for p in module.parameters()))


def _spans(arrays) -> list:
    """The merged [start, end) address ranges of ``arrays``."""
    spans = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            start = a.__array_interface__["data"][0]
        elif hasattr(getattr(a, "data", None), "ptr"):  # a CuPy array
            start = int(a.data.ptr)
        else:  # None, or a NumPy scalar (a loss): a few bytes with no address to share
            continue
        spans.append((start, start + a.nbytes))
    return _merge(spans)


def _merge(spans) -> list:
    merged = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _bytes_outside(spans, taken) -> int:
    """Bytes of ``spans`` that no range of ``taken`` covers (both merged)."""
    total = 0
    for lo, hi in spans:
        total += hi - lo - sum(max(0, min(hi, b) - max(lo, a)) for a, b in taken)
    return total


def held_bytes(arrays: dict) -> dict:
    """``{kind: bytes}`` for ``arrays`` = {kind: list of arrays}, kinds of ``HELD``; memory
    listed under an earlier kind is not counted again under a later one."""
    out, taken = {}, []
    for kind in HELD:
        spans = _spans(arrays.get(kind, ()))
        out[kind] = _bytes_outside(spans, taken)
        taken = _merge(taken + spans)
    return out


def graph_bytes(root, exclude=()) -> int:
    """Bytes of every array the graph recorded up to ``root`` keeps alive (parameters and the
    arrays of ``exclude`` left out): what backward will read, held until it has run."""
    seen, stack, arrays = set(), [root], []
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if not isinstance(t, Parameter):
            arrays.append(t.data)
        stack.extend(t._parents)
    return _bytes_outside(_spans(arrays), _spans(exclude))


def optimizer_arrays(optimizer) -> list:
    """The arrays of an optimizer's state (moments, momentum buffers)."""
    return [v for s in optimizer.state for v in s.values() if hasattr(v, "nbytes")]


class ActivationMeter:
    """Live and peak bytes of activations kept for backward."""

    def __init__(self):
        self.live_bytes = 0
        self.peak_bytes = 0

    def hold(self, tensors) -> int:
        """Count the tensors a forward keeps; returns their bytes (pass them to ``release``)."""
        return self.hold_bytes(int(sum(t.data.nbytes for t in tensors)))

    def hold_bytes(self, nbytes: int) -> int:
        self.live_bytes += int(nbytes)
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return int(nbytes)

    def release(self, nbytes: int) -> None:
        self.live_bytes -= int(nbytes)


class MemoryTracker:
    """The most bytes seen of each held kind (``sample``) and the activation meter's peak."""

    def __init__(self):
        self.meter = ActivationMeter()
        self.held = dict.fromkeys(HELD, 0)

    def sample(self, arrays: dict) -> None:
        for kind, n in held_bytes(arrays).items():
            self.held[kind] = max(self.held[kind], n)

    def report(self, activations_peak: int | None = None) -> dict:
        peak = self.meter.peak_bytes if activations_peak is None else activations_peak
        return {"parameters_bytes": self.held["parameters"],
                "gradients_bytes": self.held["gradients"],
                "optimizer_bytes": self.held["optimizer"],
                "activations_peak_bytes": int(peak), "buffers_bytes": self.held["buffers"]}


def predict(sizes, dp: int, zero: int, compute_bytes: int, master_bytes: int, states: int,
            copies: bool) -> dict:
    """The formulas of the table above for parameter groups of ``sizes`` elements (one per
    parameter when ``zero`` is 0); ``activations_peak_bytes`` is left to ``predict_activations``."""
    P = dp if zero else 1
    own = [-(-int(n) // P) for n in sizes]
    padded = [o * P for o in own]
    b, m, c = compute_bytes, master_bytes, int(bool(copies))
    whole, shard, largest = sum(padded), sum(own), max(padded)
    return {"parameters_bytes": b * (shard + largest) if zero == 3 else b * whole,
            "gradients_bytes": b * shard if zero >= 2 else b * whole,
            "optimizer_bytes": (c + states) * m * (shard if zero else whole),
            "activations_peak_bytes": None,
            "buffers_bytes": (b * largest if zero >= 2 else 0) + c * m * max(own)}


def predict_activations(sizes, rows: int, compute_bytes: int, recompute: bool = False,
                        float32_logits: bool = False) -> int:
    """Activation bytes of the MLP ``sizes`` for a batch of ``rows``: the input, and each
    Linear's output and its activation's (the logits alone at the end; and their float32 copy
    for the loss, with 16-bit compute). With recomputation the forward keeps only the block
    boundaries, and a block's backward adds its two arrays."""
    hidden, first, last = sizes[1:-1], sizes[0], sizes[-1]
    loss = rows * 4 * last if float32_logits else 0
    if not recompute:
        return rows * compute_bytes * (first + 2 * sum(hidden) + last) + loss
    inner = max([2 * h for h in hidden] + [last])
    return rows * compute_bytes * (first + sum(hidden) + last + inner) + loss


def format_table(per_rank, predicted=None) -> str:
    """The bytes of each rank by kind, one row per rank (and the predicted row), as text."""
    head = ["parameters", "gradients", "optimizer", "activations", "buffers", "total"]
    rows = [(f"rank {r}", m) for r, m in enumerate(per_rank)]
    if predicted is not None:
        rows.append(("predicted", predicted))
    lines = [f"{'':10s}" + "".join(f"{h:>13s}" for h in head)]
    for name, m in rows:
        values = [m.get(k) for k in KINDS]
        total = sum(v for v in values if v is not None)
        cells = [human_bytes(v) if v is not None else "-" for v in values] + [human_bytes(total)]
        lines.append(f"{name:10s}" + "".join(f"{c:>13s}" for c in cells))
    return "\n".join(lines)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: the one byte formatter of the package."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
