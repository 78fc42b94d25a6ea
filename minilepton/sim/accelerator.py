"""How long a GPU takes for a matrix product and for memory-bound work (a roofline).

A product of (m × k) by (k × n), ``batch`` times, does F = 2·batch·m·k·n FLOPs and moves at least
B = bytes·batch·(mk + kn + mn) through memory. On a device of peak rate R (per precision) and
memory bandwidth W:

    t = max( F / (R · e(m, k, n)),  B / (W · e_mem) ) + t_launch
    e(m, k, n) = e_max · m/(m+d) · k/(k+d) · n/(n+d)

e_max is the best fraction of the peak any product reaches, d the size at which one short side
halves it (small products fill few of the device's units). Memory-bound work (normalisation,
activation functions, softmax, optimizer updates) takes bytes / (W · e_mem). The constants of
each device come from its profile file in ``profiles/``, which names their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BYTES = {"bf16": 2, "fp16": 2, "fp32": 4, "float32": 4, "float64": 8}


@dataclass(frozen=True)
class Accelerator:
    """One GPU of a profile: peak rates, the efficiency curve, memory size and bandwidth."""

    name: str
    peak_tflops: dict
    matmul_efficiency: dict
    matmul_half_size: dict
    memory_gib: float
    memory_bandwidth_gbs: float
    memory_efficiency: float = 0.84
    launch_overhead_us: float = 4.0
    reserved_gib: float = 3.0
    description: str = ""
    sources: tuple = field(default=(), compare=False)

    kind = "accelerator"

    @property
    def memory_bytes(self) -> float:
        return self.memory_gib * 2 ** 30

    @property
    def reserved_bytes(self) -> float:
        return self.reserved_gib * 2 ** 30

    def _key(self, precision: str) -> str:
        if precision not in self.peak_tflops:
            raise ValueError(f"{self.name} has no rate for {precision!r}; it knows "
                             f"{', '.join(self.peak_tflops)}")
        return precision

    def peak_flops(self, precision: str) -> float:
        return self.peak_tflops[self._key(precision)] * 1e12

    def efficiency(self, m: float, k: float, n: float, precision: str) -> float:
        """e(m, k, n): the fraction of the peak a product of this shape reaches."""
        key = self._key(precision)
        d = self.matmul_half_size[key]
        return self.matmul_efficiency[key] * (m / (m + d)) * (k / (k + d)) * (n / (n + d))

    def matmul_seconds(self, m, k, n, precision: str, batch: float = 1, **_) -> float:
        if min(m, k, n, batch) <= 0:
            return 0.0
        flops = 2.0 * batch * m * k * n
        compute = flops / (self.peak_flops(precision) * self.efficiency(m, k, n, precision))
        moved = BYTES[precision] * batch * (m * k + k * n + m * n)
        return max(compute, self.memory_seconds(moved)) + self.launch_overhead_us * 1e-6

    def memory_seconds(self, nbytes: float, **_) -> float:
        """Memory-bound work moving ``nbytes`` (read plus written)."""
        return nbytes / (self.memory_bandwidth_gbs * 1e9 * self.memory_efficiency)

    def kernels_seconds(self, kernels: float) -> float:
        """The launch cost of ``kernels`` small kernels (elementwise ops, one per tensor)."""
        return kernels * self.launch_overhead_us * 1e-6
