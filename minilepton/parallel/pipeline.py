"""Pipeline parallelism: a ``Sequential`` cut into stages, one stage per rank of a group.

Stage s holds a contiguous run of layers. A global batch is split into M micro-batches; a
schedule (``schedules.gpipe`` or ``schedules.one_f_one_b``) says which micro-batch each stage
forwards or backwards at each step. Activations a_m go forward with send/recv, gradients
∂L/∂a_m come back the same way, and each stage accumulates its parameters' gradients over the
micro-batches. The loss is Σ_m Σ_{i∈m} ℓ_i / B_global, so the accumulated gradient is exactly
the serial gradient of the batch mean.

Every rank walks the same global plan, step by step. After each step a stage exchanges that
step's messages with its neighbours in a fixed order (from the stage below: receive, then send;
to the stage above: send, then receive), so even a send that waits for its receive (a large
MPI message) cannot deadlock: the exchanges resolve in a chain from stage 0 upwards.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..autograd import Tensor, no_grad
from ..nn import Linear, Sequential
from .memory import ActivationMeter, graph_bytes
from .recompute import checkpoint
from .schedules import FORWARD, schedule
from .stats import StepStats, sum_cross_entropy


def partition(costs, stages: int) -> list:
    """Cut ``costs`` (one per block, in order) into ``stages`` contiguous, non-empty runs
    minimising the most expensive run; returns the runs' (start, stop) block ranges."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot cut {n} layers into {stages} pipeline stages "
                         f"(more stages than layers)")
    prefix = np.concatenate([[0.0], np.cumsum(np.asarray(costs, dtype=np.float64))])
    best = {(0, 0): (0.0, None)}  # (blocks used, stages used) -> (cost of worst stage, cut)
    for k in range(1, stages + 1):
        for i in range(k, n - (stages - k) + 1):
            options = [(max(best[(j, k - 1)][0], prefix[i] - prefix[j]), j)
                       for j in range(k - 1, i) if (j, k - 1) in best]
            best[(i, k)] = min(options)
    cuts, i = [], n
    for k in range(stages, 0, -1):
        j = best[(i, k)][1]
        cuts.append((j, i))
        i = j
    return cuts[::-1]


def blocks(model: Sequential) -> list:
    """The model's layers grouped as blocks: each Linear with the layers after it (activations)."""
    out = []
    for name, module in model.named_children():
        if isinstance(module, Linear) or not out:
            out.append([])
        out[-1].append(name)
    return out


def parameter_count(module) -> int:
    return int(sum(p.size for p in module.parameters()))


def measure_block_seconds(model: Sequential, x, repeats: int = 3) -> list:
    """Median forward+backward seconds of each block on the sample batch ``x`` (for balance)."""
    seconds, h = [], Tensor(x)
    for names in blocks(model):
        block = Sequential({n: model._modules[n] for n in names})
        runs = []
        for _ in range(repeats):
            inp = Tensor(h.data, requires_grad=True)
            t0 = time.perf_counter()
            block(inp).sum().backward()
            runs.append(time.perf_counter() - t0)
        for p in block.parameters():
            p.grad = None
        with no_grad():
            h = block(h)
        seconds.append(float(np.median(runs)))
    return seconds


def split_stages(model: Sequential, stages: int, costs=None) -> list:
    """``stages`` Sequentials (slices of ``model``, names kept), balanced by ``costs`` per block
    (default: parameter count; pass ``measure_block_seconds(...)`` to balance by time)."""
    groups = blocks(model)
    if costs is None:
        costs = [sum(parameter_count(model._modules[n]) for n in g) for g in groups]
    return [Sequential({n: model._modules[n] for g in groups[a:b] for n in g})
            for a, b in partition(costs, stages)]


def partition_sizes(sizes, stages: int) -> list:
    """Each stage's Linear shapes [(n_in, n_out), …] for an MLP ``sizes`` (by parameters)."""
    shapes = list(zip(sizes[:-1], sizes[1:]))
    cuts = partition([a * b + b for a, b in shapes], stages)
    return [shapes[a:b] for a, b in cuts]


class PipelineParallel:
    """This rank's stage of a pipeline over ``comm`` (the pipeline group; rank = stage).

    ``stage_module`` is this stage's Sequential (possibly tensor-parallel inside);
    ``widths[s]`` is the feature width entering stage s and ``widths[P]`` the logits' width.
    ``global_rank`` (default: the rank in ``comm``) names this process in error messages;
    ``loss_fn(logits, labels)``, a summed loss, is what the last stage differentiates.
    ``recompute``: keep only each micro-batch's stage input, and recompute the stage in its
    backward (``recompute.checkpoint``).
    """

    def __init__(self, stage_module, comm, widths, micro_batches: int = 4,
                 schedule_name: str = "1f1b", tracer=None, global_rank: int | None = None,
                 loss_fn=sum_cross_entropy, recompute: bool = False):
        self.module, self.comm, self.loss_fn = stage_module, comm, loss_fn
        self.recompute = bool(recompute)
        self.global_rank = comm.rank if global_rank is None else int(global_rank)
        self.stage, self.stages = comm.rank, comm.world_size
        self.widths = [int(w) for w in widths]
        self.micro_batches, self.schedule_name = int(micro_batches), schedule_name
        self.tracer = tracer
        self.meter = ActivationMeter()
        self.last_seconds = {"wall": 0.0, "compute": 0.0}
        self._plans: dict = {}
        self.last_ops: list = []

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    def _span(self, name, **args):
        return self.tracer.span(name, **args) if self.tracer else _NULL

    def _plan(self, micro_batches: int) -> dict:
        """The schedule as {step: {stage: op}} (computed once per micro-batch count)."""
        if micro_batches not in self._plans:
            by_step = {}
            for op in schedule(self.schedule_name, micro_batches, self.stages):
                by_step.setdefault(op.step, {})[op.stage] = op
            self._plans[micro_batches] = by_step
        return self._plans[micro_batches]

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        """Forward and backward of every micro-batch by the schedule; gradients accumulate in
        the stage's parameters (not cleared here). Returns the batch's stats on every stage."""
        M = min(self.micro_batches, len(x))
        bounds = np.linspace(0, len(x), M + 1).astype(int)
        dtype = self.module.parameters()[0].dtype
        by_step = self._plan(M)
        inbox, stash, executed = {}, {}, []
        stats = np.zeros(3)  # loss_sum, correct, count (filled on the last stage)
        compute_s, t_start = 0.0, time.perf_counter()
        s = self.stage
        for step in range(1 + max(by_step)):
            ops = by_step.get(step, {})
            mine = ops.get(s)
            if mine is not None:
                t0, cpu0 = time.perf_counter(), time.thread_time()
                m = mine.micro_batch
                rows = slice(bounds[m], bounds[m + 1])
                try:
                    with self._span(mine.phase, micro_batch=m, stage=s):
                        if mine.phase == FORWARD:
                            src = x[rows] if self.is_first else inbox.pop(("a", m))
                            self._forward(m, src, y[rows], global_batch_size, stash, stats)
                        else:
                            self._backward(m, inbox.pop(("g", m), None), stash)
                except Exception as exc:
                    raise RuntimeError(f"pipeline stage {s} (rank {self.global_rank}) failed in "
                                       f"the {mine.phase} of micro-batch {m}: "
                                       f"{type(exc).__name__}: {exc}") from exc
                compute_s += time.perf_counter() - t0
                executed.append((m, mine.phase, time.thread_time() - cpu0))
            self._exchange(ops, stash, inbox, bounds, dtype)
        self.last_seconds = {"wall": time.perf_counter() - t_start, "compute": compute_s}
        self.last_ops = executed  # (micro_batch, phase, CPU seconds), in execution order
        if self.stages > 1:
            self.comm.broadcast(stats, root=self.stages - 1)
        return StepStats(float(stats[0]), int(stats[1]), int(stats[2]))

    def _forward(self, m, src, y_mb, global_batch_size, stash, stats):
        h = Tensor(src, requires_grad=not self.is_first)
        if self.recompute:  # only h is kept; the stage runs again in this micro-batch's backward
            out = checkpoint(self.module, h, self.meter)
        else:
            out = self.module(h)
        if self.is_last:
            loss = self.loss_fn(out, y_mb) * (1.0 / global_batch_size)
            stats += (loss.item() * global_batch_size,
                      int((out.data.argmax(axis=1) == y_mb).sum()), len(y_mb))
            out = loss
        stash[m] = (h, out, self.meter.hold_bytes(graph_bytes(out)))  # all the graph keeps

    def _backward(self, m, grad, stash):
        h, out, nbytes = stash[m]
        out.backward(grad)
        self.meter.release(nbytes)
        stash[m] = (h, None, 0)  # keep the input until its gradient has been sent

    def _exchange(self, ops, stash, inbox, bounds, dtype):
        """This step's messages: from/to the stage below, then to/from the stage above."""
        s, comm = self.stage, self.comm
        below, above, mine = ops.get(s - 1), ops.get(s + 1), ops.get(s)

        def rows(m):
            return bounds[m + 1] - bounds[m]
        if s > 0:
            if below is not None and below.phase == FORWARD:
                m = below.micro_batch
                inbox[("a", m)] = comm.recv(np.empty((rows(m), self.widths[s]), dtype), s - 1)
            if mine is not None and mine.phase != FORWARD:
                h = stash.pop(mine.micro_batch)[0]
                comm.send(np.ascontiguousarray(h.grad), s - 1)
        elif mine is not None and mine.phase != FORWARD:
            stash.pop(mine.micro_batch)
        if s < self.stages - 1:
            if mine is not None and mine.phase == FORWARD:
                comm.send(np.ascontiguousarray(stash[mine.micro_batch][1].data), s + 1)
            if above is not None and above.phase != FORWARD:
                m = above.micro_batch
                inbox[("g", m)] = comm.recv(np.empty((rows(m), self.widths[s + 1]), dtype), s + 1)

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Loss and accuracy over (x, y), forward only, chunk by chunk; same totals everywhere."""
        totals = np.zeros(3)
        s, comm = self.stage, self.comm
        dtype = self.module.parameters()[0].dtype
        with no_grad():
            for start in range(0, len(x), batch_size):
                n = min(batch_size, len(x) - start)
                h = (x[start:start + n] if self.is_first
                     else comm.recv(np.empty((n, self.widths[s]), dtype), s - 1))
                out = self.module(Tensor(h))
                if not self.is_last:
                    comm.send(np.ascontiguousarray(out.data), s + 1)
                    continue
                yb = y[start:start + n]
                totals += (self.loss_fn(out, yb).item(),
                           int((out.data.argmax(axis=1) == yb).sum()), n)
        if self.stages > 1:
            comm.broadcast(totals, root=self.stages - 1)
        return StepStats(float(totals[0]), int(totals[1]), int(totals[2]))

    def bubble_fraction(self) -> float:
        """Measured idle share of the last ``train_step`` on this stage: 1 − compute / wall."""
        wall = self.last_seconds["wall"]
        return 1.0 - self.last_seconds["compute"] / wall if wall > 0 else 0.0


_NULL = nullcontext()  # a span when nothing is traced (reusable)
