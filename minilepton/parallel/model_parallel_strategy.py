"""The ``Strategy`` for tensor-, pipeline- and hybrid-parallel training on a dp × tp × pp mesh.

Every rank builds the same seeded serial model, then keeps only its part: the layers of its
pipeline stage (``pipeline.split_stages``), with their Linear layers sharded over its tensor
group (``tensor_parallel.parallelize_mlp``). Each data-parallel replica computes a contiguous
slice of the global batch; the loss is Σ(local per-sample losses)/B_global, so summing the
replicas' gradients (one all-reduce over the data group) gives the serial gradient exactly.

One step: zero the gradients; forward and backward (through the pipeline schedule when pp > 1);
all-reduce the gradients over the data group when dp > 1; the optimizer updates this rank's
shard. Checkpoints are per rank (``replicated_state = False``).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..autograd import Tensor
from ..autograd.losses import cross_entropy
from ..strategy import StepStats, Strategy, evaluate_model
from .memory import parameter_bytes
from .mesh import Mesh, check_layout
from .pipeline import PipelineParallel, split_stages
from .tensor_parallel import full_state_dict, parallelize_mlp


class ModelParallelStrategy(Strategy):
    """This rank's shard of the model on the mesh, and how one step runs on it."""

    replicated_state = False

    def __init__(self, comm, model, optimizer_factory, dp: int = 1, tp: int = 1, pp: int = 1,
                 micro_batches: int = 4, schedule: str = "1f1b", tracer=None):
        self.comm, self.rank, self.is_main = comm, comm.rank, comm.rank == 0
        self.mesh = Mesh(comm, dp, tp, pp)
        self.tracer = tracer
        self.shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
        stages = split_stages(model, pp)
        self.owner = {n: s for s, st in enumerate(stages) for n, _ in st.named_parameters()}
        stage = stages[self.mesh.pp_rank]
        self.model = parallelize_mlp(stage, self.mesh.tp_comm) if tp > 1 else stage
        widths = [_features(st, "in_features") for st in stages]
        widths.append(_features(stages[-1], "out_features"))
        self.pipe = (PipelineParallel(self.model, self.mesh.pp_comm, widths, micro_batches,
                                      schedule, tracer, comm.rank) if pp > 1 else None)
        self.optimizer = optimizer_factory(self.model.parameters())
        if tracer is not None:
            tracer.watch(comm, self.mesh.tp_comm, self.mesh.pp_comm, self.mesh.dp_comm)
        self.sync_bytes, self.steps, self.step_seconds = 0, 0, 0.0
        self.step_comm_bytes, self.step_comm_seconds = 0, 0.0
        self.trace_path = None

    # ---- the step
    def local_indices(self, global_indices):
        return np.array_split(global_indices, self.mesh.dp)[self.mesh.dp_rank]

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        t0, (b0, c0) = time.perf_counter(), self._comm_totals()
        if self.tracer is None:
            stats = self._step(x, y, global_batch_size)
        else:
            with self.tracer.step():
                stats = self._step(x, y, global_batch_size)
        self.step_seconds += time.perf_counter() - t0
        b1, c1 = self._comm_totals()
        self.step_comm_bytes += b1 - b0
        self.step_comm_seconds += c1 - c0
        return stats

    def _comm_totals(self) -> tuple:
        """(bytes sent, seconds inside communication) so far, over this rank's groups."""
        comms = (self.mesh.tp_comm, self.mesh.pp_comm, self.mesh.dp_comm)
        return (sum(c.stats.bytes_sent for c in comms),
                sum(sum(c.stats.seconds.values()) for c in comms))

    def _step(self, x, y, global_batch_size: int) -> StepStats:
        self.optimizer.zero_grad()
        if self.pipe is not None:
            stats = self.pipe.train_step(x, y, global_batch_size)
        else:
            with self._span("forward"):
                logits = self.model(Tensor(x))
                loss = cross_entropy(logits, y, reduction="sum") * (1.0 / global_batch_size)
            with self._span("backward"):
                loss.backward()
            stats = StepStats(loss.item() * global_batch_size,
                              int((logits.data.argmax(axis=1) == y).sum()), len(y))
        if self.mesh.dp > 1:
            self._sum_gradients()
        with self._span("optimizer"):
            self.optimizer.step()
        self.steps += 1
        return stats

    def _sum_gradients(self) -> None:
        """Σ over the data group of every gradient, in one flat buffer (fixed order)."""
        params = self.model.parameters()
        for p in params:
            if p.grad is None:
                p.grad = np.zeros_like(p.data)
        flat = np.concatenate([p.grad.reshape(-1) for p in params])
        self.mesh.dp_comm.allreduce(flat, op="sum")
        self.sync_bytes += flat.nbytes
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.size].reshape(p.shape)
            offset += p.size

    def _span(self, name):
        return self.tracer.span(name) if self.tracer is not None else _NULL

    # ---- metrics
    def reduce_stats(self, stats: StepStats) -> StepStats:
        """Totals over the data group (tensor and pipeline ranks already share their stats)."""
        totals = np.array([stats.loss_sum, stats.correct, stats.count], dtype=np.float64)
        self.mesh.dp_comm.allreduce(totals, op="sum")
        return StepStats(float(totals[0]), round(totals[1]), round(totals[2]))

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Each data replica scores a contiguous slice; totals summed over the data group."""
        lo, hi = (len(y) * r // self.mesh.dp for r in (self.mesh.dp_rank, self.mesh.dp_rank + 1))
        xs, ys = x[lo:hi], y[lo:hi]
        if self.pipe is not None:
            local = self.pipe.evaluate(xs, ys, batch_size)
        else:
            local = evaluate_model(self.model, xs, ys, batch_size)
        totals = self.reduce_stats(local)
        if self.tracer is not None and self.trace_path:
            self.write_trace(self.trace_path)
        return totals

    def write_trace(self, path: str) -> None:
        """Gather every rank's timeline and write one Chrome-trace JSON on rank 0 (collective)."""
        from ..trace import gather_events, write_chrome_trace  # noqa: PLC0415
        events = gather_events(self.comm, self.tracer)
        if events is not None:
            write_chrome_trace(events, path)

    def memory_report(self) -> dict:
        """This rank's parameter bytes and the peak bytes of activations its stage held."""
        peak = self.pipe.meter.peak_bytes if self.pipe is not None else 0
        return {"parameter_bytes": parameter_bytes(self.model), "peak_activation_bytes": peak}

    def comm_report(self) -> dict:
        """Bytes this rank sent per training step, and the share of step time it spent inside
        communication (including waiting for a peer: pipeline bubbles show up here)."""
        return {"bytes_per_step": self.step_comm_bytes / max(self.steps, 1),
                "comm_seconds_fraction": self.step_comm_seconds / max(self.step_seconds, 1e-12)}

    # ---- state
    def full_parameters(self) -> dict:
        """The serial model's parameters by name on every rank (a collective)."""
        mine = (full_state_dict(self.model) if self.mesh.tp > 1
                else {n: p.numpy().copy() for n, p in self.model.named_parameters()})
        if self.mesh.pp == 1:
            return mine
        out = {}
        for name, (shape, dtype) in self.shapes.items():
            array = mine[name] if name in mine else np.empty(shape, dtype)
            out[name] = self.mesh.pp_comm.broadcast(np.ascontiguousarray(array),
                                                    root=self.owner[name])
        return out


def _features(stage, which: str) -> int:
    """Width entering (``in_features``) or leaving (``out_features``) a stage."""
    layers = [m for m in stage if hasattr(m, which)]
    return getattr(layers[0] if which == "in_features" else layers[-1], which)


_NULL = nullcontext()  # a span when nothing is traced (reusable)


def build_strategy(comm, cfg, sizes) -> ModelParallelStrategy:
    """The model-parallel strategy for ``cfg`` (dp, tp, pp, micro_batches, schedule, trace)."""
    from ..trace import Tracer  # noqa: PLC0415
    from ..train import build_model, build_optimizer  # noqa: PLC0415 - train imports parallel
    check_layout(cfg, sizes)
    model = build_model(cfg, n_features=sizes[0], n_classes=sizes[-1])
    tracer = Tracer(comm.rank) if cfg.trace else None
    strategy = ModelParallelStrategy(comm, model, lambda params: build_optimizer(cfg, params),
                                     cfg.dp, cfg.tp, cfg.pp, cfg.micro_batches, cfg.schedule,
                                     tracer)
    strategy.trace_path = cfg.trace
    return strategy
