"""This machine, as ``minilepton calibrate`` measured it: rates read from tables, not datasheets.

A *measured* profile replaces the accelerator's formulas by what the calibration timed here:

- matrix products: GFLOP/s on a grid of (m, k, n), per dtype and BLAS thread count, read by
  log-space interpolation (``tables.grid``): t = 2mkn / rate(m, k, n). With several threads
  the rate is taken as at least the one-thread rate: a slower cell is threads that waited for
  a core another process held while calibrating (on a quiet machine they never are slower);
- memory-bound NumPy work: seconds per byte moved, by array size (in cache or not);
- optimizer updates: seconds for one parameter tensor of N elements, per optimizer and dtype;
- the engine's own cost: seconds per training step, per Linear block (its autograd nodes, their
  backward, the optimizer's loop over its two tensors) and per pipeline micro-batch;
- collectives: for each backend, path and P, a line t = a + b·N fitted to timed calls.

A worker process stands for one device. ``cores`` is how many such devices can compute at
once: more workers than cores share them, and a step cannot take less than the CPU time of all
workers over the cores.
"""

from __future__ import annotations

from . import tables
from .collectives import AlphaBeta, Link


class MeasuredCompute:
    """Compute rates of a measured profile (the ``compute`` part of its JSON)."""

    kind = "measured"
    launch_overhead_us = 0.0

    def __init__(self, profile: dict):
        self.name = profile.get("name", "this-machine")
        self.description = profile.get("description", "")
        self.cores = int(profile["cores"])
        self.memory_bytes = float(profile["memory_bytes"])
        self.reserved_bytes = float(profile.get("process_bytes", 0.0))
        self.matmul = profile["matmul"]
        self.memory = profile["memory"]
        self.optimizer = profile["optimizer"]
        self.engine = profile["engine"]
        self.sources = tuple(profile.get("sources", ()))

    def _threads_key(self, table: dict, threads: int) -> str:
        known = sorted(int(t) for t in table)
        return str(min(known, key=lambda t: (abs(t - threads), t)))

    def matmul_seconds(self, m, k, n, precision: str, batch: float = 1, threads: int = 1) -> float:
        if min(m, k, n, batch) <= 0:
            return 0.0
        by_dtype = self.matmul.get(precision) or self.matmul["float32"]
        rate = max(tables.grid(by_dtype[key]["axes"], by_dtype[key]["gflops"], (m, k, n))
                   for key in {self._threads_key(by_dtype, threads), self._threads_key(by_dtype, 1)})
        return batch * 2.0 * m * k * n / (rate * 1e9)

    def memory_seconds(self, nbytes: float, array_bytes: float | None = None, **_) -> float:
        """NumPy elementwise work moving ``nbytes``, on arrays of ``array_bytes`` each."""
        if nbytes <= 0:
            return 0.0
        per_byte = tables.loglog(self.memory, array_bytes or nbytes) / (array_bytes or nbytes)
        return nbytes * per_byte

    def optimizer_seconds(self, optimizer: str, dtype: str, sizes) -> float:
        """The element-proportional part of updating tensors of ``sizes`` elements (the fixed
        cost per tensor is part of the engine's per-block cost)."""
        table = self.optimizer.get(optimizer, {}).get(dtype) or self.optimizer["sgd"]["float32"]
        floor = table[0][1]
        return sum(max(tables.loglog(table, n) - floor, 0.0) for n in sizes)

    def kernels_seconds(self, kernels: float) -> float:
        return 0.0

    def peak_flops(self, precision: str) -> float | None:
        return None


class MeasuredFabric:
    """One backend's collectives on this machine: t = a_P + b_P·N per operation, path and P,
    optionally slowed to a simulated ``link`` (each operation lasts at least as long as the
    link takes for its messages, as ``minilepton.cluster.simulate`` does)."""

    def __init__(self, fits: dict, path: str, link: Link | None = None):
        self.fits, self.path, self.link = fits, path, link
        self.ring = AlphaBeta(link) if link is not None else None

    def _line(self, op: str, P: int) -> tuple[float, float]:
        """(a, b) for ``op`` at P ranks: measured, or scaled from the nearest measured P by the
        ring's counts, α·(P−1) and β·(P−1)/P."""
        by_path = self.fits.get(op) or self.fits["allreduce"]
        table = by_path.get(self.path) or next(iter(by_path.values()))
        if str(P) in table:
            fit = table[str(P)]
            return fit["a"], fit["b"]
        near = min((int(p) for p in table), key=lambda p: (abs(p - P), p))
        fit = table[str(near)]
        return (fit["a"] * (P - 1) / max(near - 1, 1),
                fit["b"] * ((P - 1) / P) / ((near - 1) / near))

    def _cost(self, op: str, nbytes: float, P: int, messages: int, sent: float) -> float:
        if P < 2:
            return 0.0
        a, b = self._line(op, P)
        t = a + b * nbytes
        if self.link is not None:
            t = max(t, messages * self.ring.alpha + sent * self.ring.beta)
        return t

    def allreduce(self, nbytes: float, P: int) -> float:
        return self._cost("allreduce", nbytes, P, 2 * (P - 1), 2 * (P - 1) / P * nbytes)

    def reduce_scatter(self, nbytes: float, P: int) -> float:
        return self._cost("reduce_scatter", nbytes, P, P - 1, (P - 1) / P * nbytes)

    def allgather(self, nbytes: float, P: int) -> float:
        return self._cost("allgather", nbytes, P, P - 1, (P - 1) / P * nbytes)

    def broadcast(self, nbytes: float, P: int) -> float:
        return self._cost("broadcast", nbytes, P, P - 1, (P - 1) * nbytes)

    def p2p(self, nbytes: float) -> float:
        a, b = self._line("p2p", 2)
        t = a + b * nbytes
        if self.link is not None:
            t = max(t, self.ring.alpha + nbytes * self.ring.beta)
        return t
