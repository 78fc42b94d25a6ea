"""How one training step runs on a rank: the seam between the training loop and parallelism.

The engine's loop owns epochs, batches, logging and checkpoints; a *strategy* owns the step.
Every rank walks the same global batches; the strategy says which part of each batch this rank
computes (``local_indices``) and how ranks talk. ``ParallelStrategy`` composes the three kinds of
parallelism over one rank grid (``Mesh``), innermost first:

    tensor    each Linear of this rank's stage sharded over the tensor group   (tensor_parallel)
    pipeline  the layers cut into stages, micro-batches scheduled over stages   (pipeline)
    data      the batch split over the data group, gradients summed             (data_parallel)

One process is the 1 × 1 × 1 grid. The loss every rank differentiates is
L_r = Σ_{i∈S_r} ℓ_i / B_global (``loss_fn`` is a summed loss), so the data group's gradient sum
is exactly the gradient of the global-batch mean, even for unequal shards.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..autograd import Tensor
from ..comm.local import LocalComm
from .data_parallel import DataParallel
from .local_sgd import LocalSGD
from .memory import parameter_bytes
from .mesh import Mesh
from .overlap import OverlappedDataParallel
from .pipeline import PipelineParallel, split_stages
from .sampler import DistributedSampler, shard_offsets
from .state import full_state, gather_full, load_full_state
from .stats import StepStats, evaluate_model, step_stats, sum_cross_entropy
from .tensor_parallel import parallelize_mlp

_NULL = nullcontext()  # the span when nothing is traced (reusable)


class Strategy:
    """What the loop asks of a strategy. ``ParallelStrategy`` implements all of it; the state
    methods act on ``self.model`` / ``self.optimizer`` (this rank's pieces) and ``self.mesh``."""

    is_main = True            # this rank prints, writes metrics, saves files
    rank = 0

    def local_indices(self, global_indices: np.ndarray) -> np.ndarray:
        """The part of a global batch this rank computes."""
        raise NotImplementedError

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        """Forward, backward, synchronise, update; stats over this rank's samples."""
        raise NotImplementedError

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Loss and accuracy over (x, y) with no graph; every rank returns the same totals."""
        raise NotImplementedError

    def reduce_stats(self, stats: StepStats) -> StepStats:
        """Totals over all ranks."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to resume, as whole tensors by name (``state.full_state``): a
        collective, loadable on any layout."""
        return full_state(self)

    def load_state_dict(self, state: dict) -> None:
        load_full_state(self, state)

    def full_parameters(self) -> dict:
        """The whole model's parameters as NumPy arrays by name (a collective)."""
        return gather_full(self, {n: p.numpy() for n, p in self.model.named_parameters()})

    def comm_report(self) -> dict:
        """``bytes_per_step`` sent and ``comm_seconds_fraction`` of the step time."""
        return {"bytes_per_step": 0.0, "comm_seconds_fraction": 0.0}


class ParallelStrategy(Strategy):
    """This rank's part of the model on ``mesh``, and how one step runs on it.

    ``make_optimizer(params)`` builds the optimizer over this rank's shard. Data-parallel
    options (used when ``mesh.dp > 1``): ``bucket_bytes``, ``compress``, ``overlap``,
    ``sync_every`` (> 1: local SGD), ``balancer`` (an object with ``weights`` and
    ``update(comm, samples, compute_s)``, from ``balance``). ``slow_down(compute_s)`` stretches
    this rank's compute (a simulated slow node); ``tracer`` records spans.
    """

    def __init__(self, mesh, model, make_optimizer, *, loss_fn=sum_cross_entropy,
                 micro_batches: int = 4, schedule: str = "gpipe", bucket_bytes: int = 1 << 20,
                 compress=None, overlap: bool = False, sync_every: int = 1, balancer=None,
                 slow_down=None, tracer=None):
        comm = mesh.comm
        self.mesh, self.comm, self.rank, self.is_main = mesh, comm, comm.rank, comm.rank == 0
        self.loss_fn, self.tracer, self.slow_down, self.balancer = loss_fn, tracer, slow_down, balancer
        self.shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
        stages = split_stages(model, mesh.pp)
        self.owner = {n: s for s, st in enumerate(stages) for n, _ in st.named_parameters()}
        stage = stages[mesh.pp_rank]
        self.model = parallelize_mlp(stage, mesh.tp_comm) if mesh.tp > 1 else stage  # tensor
        self.pipe = None
        if mesh.pp > 1:                                                               # pipeline
            widths = [_width(st, "in_features") for st in stages]
            widths.append(_width(stages[-1], "out_features"))
            self.pipe = PipelineParallel(self.model, mesh.pp_comm, widths, micro_batches,
                                         schedule, tracer, comm.rank, loss_fn)
        self.sampler = DistributedSampler(mesh.dp_rank, mesh.dp)                     # data
        if balancer is not None:
            self.sampler.set_weights(balancer.weights)
        self.dp, self.local_sgd = None, None
        if mesh.dp > 1:
            wrapper = OverlappedDataParallel if overlap and sync_every == 1 else DataParallel
            self.dp = wrapper(self.model, mesh.dp_comm, bucket_bytes, reduce="sum",
                              compress=compress)
            if sync_every > 1:
                self.local_sgd = LocalSGD(self.dp, sync_every)
        self.optimizer = make_optimizer(self.model.parameters())
        if tracer is not None:
            tracer.watch(*mesh.comms())
        self.steps, self.step_seconds, self.step_bytes, self.step_comm_seconds = 0, 0.0, 0, 0.0

    # ---- the step
    def local_indices(self, global_indices):
        return self.sampler.local_indices(global_indices)

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        t0, (b0, c0) = time.perf_counter(), self._comm_totals()
        with self.tracer.step() if self.tracer is not None else _NULL:
            stats = self._step(x, y, global_batch_size)
        b1, c1 = self._comm_totals()
        self.steps += 1
        self.step_seconds += time.perf_counter() - t0
        self.step_bytes += b1 - b0
        self.step_comm_seconds += c1 - c0
        return stats

    def _step(self, x, y, global_batch_size: int) -> StepStats:
        t0 = time.perf_counter()
        if self.dp is not None:
            self.dp.zero_grad()  # gradients become views of the communication buckets
        else:
            self.optimizer.zero_grad()
        n = len(y)
        stats = StepStats(0.0, 0, 0)
        if self.pipe is not None:
            stats = self.pipe.train_step(x, y, global_batch_size)
        elif n:  # an empty shard adds zeros to the all-reduce, and still joins it
            with self._span("forward"):
                logits = self.model(Tensor(x))
                loss = self.loss_fn(logits, y) * (1.0 / global_batch_size)
            with self._span("backward"):
                loss.backward()
            stats = step_stats(loss.item() * global_batch_size, logits.data, y)
        if self.slow_down is not None:
            with self._span("slow node"):
                self.slow_down(time.perf_counter() - t0)
        compute_s = time.perf_counter() - t0
        if self.local_sgd is not None:
            self.local_sgd.before_update(n, global_batch_size)
        elif self.dp is not None:
            self.dp.sync_gradients()
        if n or self.local_sgd is None:
            with self._span("optimizer"):
                self.optimizer.step()
        if self.local_sgd is not None:
            self.local_sgd.after_update(n, global_batch_size)
        if self.balancer is not None and self.mesh.dp > 1:
            weights = self.balancer.update(self.mesh.dp_comm, n, compute_s)
            if weights is not None:
                self.sampler.set_weights(weights)
        return stats

    def _span(self, name):
        return self.tracer.span(name) if self.tracer is not None else _NULL

    def _comm_totals(self) -> tuple:
        """(bytes sent, seconds the step waited on communication) so far, over the groups.

        The data group counts the wait ``DataParallel`` measured (with overlap, only what the
        step still sees); the tensor and pipeline groups count their time inside calls."""
        comms = self.mesh.comms()
        sent = sum(c.stats.bytes_sent for c in comms)
        waited = sum(sum(c.stats.seconds.values()) for c in (self.mesh.tp_comm, self.mesh.pp_comm)
                     if c.world_size > 1)
        if self.dp is not None:
            waited += self.dp.sync_seconds
        return sent, waited

    # ---- metrics
    def reduce_stats(self, stats: StepStats) -> StepStats:
        """Totals over the data group (tensor and pipeline ranks already share their stats)."""
        return self._data_group_totals(stats)

    def _data_group_totals(self, stats: StepStats) -> StepStats:
        totals = np.array([stats.loss_sum, stats.correct, stats.count], dtype=np.float64)
        self.mesh.dp_comm.allreduce(totals, op="sum")
        return StepStats(float(totals[0]), round(totals[1]), round(totals[2]))

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Each data replica scores a contiguous slice; totals summed over the data group."""
        if self.local_sgd is not None:
            self.local_sgd.finish()
        offsets = shard_offsets(len(y), np.ones(self.mesh.dp))
        lo, hi = int(offsets[self.mesh.dp_rank]), int(offsets[self.mesh.dp_rank + 1])
        if self.pipe is not None:
            local = self.pipe.evaluate(x[lo:hi], y[lo:hi], batch_size)
        else:
            local = evaluate_model(self.model, x[lo:hi], y[lo:hi], batch_size, self.loss_fn)
        return self._data_group_totals(local)

    def comm_report(self) -> dict:
        """Bytes this rank sent per step, and the share of step time spent waiting on
        communication (pipeline bubbles show up here too)."""
        return {"bytes_per_step": self.step_bytes / max(self.steps, 1),
                "comm_seconds_fraction": self.step_comm_seconds / max(self.step_seconds, 1e-12)}

    def memory_report(self) -> dict:
        """This rank's parameter bytes and the peak bytes of activations its stage held."""
        peak = self.pipe.meter.peak_bytes if self.pipe is not None else 0
        return {"parameter_bytes": parameter_bytes(self.model), "peak_activation_bytes": peak}

def _width(stage, which: str) -> int:
    """Width entering (``in_features``) or leaving (``out_features``) a stage."""
    layers = [m for m in stage if hasattr(m, which)]
    return getattr(layers[0] if which == "in_features" else layers[-1], which)


class SingleProcess(ParallelStrategy):
    """One process computes everything (the 1 × 1 × 1 grid): the reference every layout equals."""

    def __init__(self, model, optimizer, loss_fn=sum_cross_entropy):
        super().__init__(Mesh(LocalComm()), model, lambda params: optimizer, loss_fn=loss_fn)
