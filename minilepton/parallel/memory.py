"""Memory accounting per rank: parameter bytes and the activations a pipeline stage holds.

Parameters: Σ over the rank's parameters of their bytes (gradients take as much again, Adam's
two moments twice as much). Tensor parallelism divides the sharded matrices by tp; pipeline
parallelism gives each stage only its layers.

Activations: between the forward and the backward of a micro-batch, autograd keeps every
layer's output alive (the backward needs them). ``ActivationMeter`` counts those bytes as
a stage forwards a micro-batch and frees them when its backward has run; its peak is the most
the stage held at once: M micro-batches' worth for GPipe, at most P−s for 1F1B on stage s.
"""

from __future__ import annotations


def parameter_bytes(module) -> int:
    """Bytes of ``module``'s parameters on this rank."""
    return int(sum(p.data.nbytes for p in module.parameters()))


class ActivationMeter:
    """Live and peak bytes of activations kept for backward."""

    def __init__(self):
        self.live_bytes = 0
        self.peak_bytes = 0

    def hold(self, tensors) -> int:
        """Count the tensors a forward keeps; returns their bytes (pass them to ``release``)."""
        nbytes = int(sum(t.data.nbytes for t in tensors))
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return nbytes

    def release(self, nbytes: int) -> None:
        self.live_bytes -= int(nbytes)


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: the one byte formatter of the package."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
