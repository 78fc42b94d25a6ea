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

Memory techniques, each in its own file, change one piece of the step: ``zero`` (the data
group's ``ZeroDataParallel`` and an optimizer over owned blocks), ``precision`` (16-bit compute,
``masters.MasterWeights`` in full precision), ``recompute`` (the forward by ``checkpoint``ed
blocks), ``grad_accum`` (K micro-steps per update, synchronised after the last).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..autograd import Tensor
from ..comm.local import LocalComm
from .accounting import held_arrays, predicted
from .base import Strategy
from .data_parallel import DataParallel
from .local_sgd import LocalSGD
from .master_state import load_state, master_values, save_state
from .masters import MasterWeights
from .memory import MemoryTracker, graph_bytes, parameter_bytes
from .mesh import Mesh
from .options import memory_conflict
from .overlap import OverlappedDataParallel
from .pipeline import PipelineParallel, split_stages
from .precision import LossScaler, cast_module, compute_dtype, float32_loss
from .recompute import Recomputed
from .sampler import DistributedSampler, shard_offsets
from .stats import StepStats, evaluate_model, step_stats, sum_cross_entropy
from .tensor_parallel import parallelize_mlp
from .zero import ZeroDataParallel

_NULL = nullcontext()  # the span when nothing is traced (reusable)


class ParallelStrategy(Strategy):
    """This rank's part of the model on ``mesh``, and how one step runs on it.

    ``make_optimizer(params)`` builds the optimizer over this rank's shard. Data-parallel
    options (used when ``mesh.dp > 1``): ``bucket_bytes``, ``compress``, ``overlap``,
    ``sync_every`` (> 1: local SGD), ``balancer`` (an object with ``weights`` and
    ``update(comm, samples, compute_s)``, from ``balance``). ``slow_down(compute_s)`` stretches
    this rank's compute (a simulated slow node); ``tracer`` records spans. Memory: ``zero``
    (0-3), ``recompute``, ``precision`` (fp32, bf16, fp16; ``loss_scaler`` for fp16, default a
    ``precision.LossScaler()``), ``grad_accum`` (micro-steps per update).
    """

    def __init__(self, mesh, model, make_optimizer, *, loss_fn=sum_cross_entropy,
                 micro_batches: int = 4, schedule: str = "gpipe", bucket_bytes: int = 1 << 20,
                 compress=None, overlap: bool = False, sync_every: int = 1, balancer=None,
                 slow_down=None, tracer=None, zero: int = 0, recompute: bool = False,
                 precision: str = "fp32", grad_accum: int = 1, loss_scaler=None):
        comm = mesh.comm
        why = memory_conflict(zero=zero, precision=precision, pp=mesh.pp, sync_every=sync_every,
                              compress=getattr(compress, "name", compress), overlap=overlap)
        if why:
            raise ValueError(why)
        self.mesh, self.comm, self.rank, self.is_main = mesh, comm, comm.rank, comm.rank == 0
        self.loss_fn = float32_loss(loss_fn) if precision != "fp32" else loss_fn
        self.tracer, self.slow_down, self.balancer = tracer, slow_down, balancer
        self.zero, self.recompute, self.grad_accum = int(zero), bool(recompute), int(grad_accum)
        self.precision, self.accounting, self._rows = precision, MemoryTracker(), 0
        self.shapes = {n: (p.shape, p.dtype) for n, p in model.named_parameters()}
        stages = split_stages(model, mesh.pp)
        self.owner = {n: s for s, st in enumerate(stages) for n, _ in st.named_parameters()}
        stage = stages[mesh.pp_rank]
        self.model = parallelize_mlp(stage, mesh.tp_comm) if mesh.tp > 1 else stage  # tensor
        dtype = self.model.parameters()[0].dtype
        self.compute_dtype = compute_dtype(precision, dtype)
        if mesh.dp > 1 and (zero or precision != "fp32"):  # replicas start equal, as DP's do
            for p in self.model.parameters():
                mesh.dp_comm.broadcast(p.data, root=0)
        initial = cast_module(self.model, self.compute_dtype) if precision != "fp32" else None
        self.pipe = None
        if mesh.pp > 1:                                                               # pipeline
            widths = [_width(st, "in_features") for st in stages]
            widths.append(_width(stages[-1], "out_features"))
            self.pipe = PipelineParallel(self.model, mesh.pp_comm, widths, micro_batches,
                                         schedule, tracer, comm.rank, self.loss_fn, recompute)
        self.sampler = DistributedSampler(mesh.dp_rank, mesh.dp)                     # data
        if balancer is not None:
            self.sampler.set_weights(balancer.weights)
        self.dp, self.local_sgd, self.master = None, None, None
        if zero:
            self.dp = ZeroDataParallel(self.model, mesh.dp_comm, zero, bucket_bytes)
        elif mesh.dp > 1:
            wrapper = OverlappedDataParallel if overlap and sync_every == 1 else DataParallel
            self.dp = wrapper(self.model, mesh.dp_comm, bucket_bytes, reduce="sum",
                              compress=compress)
            if sync_every > 1:
                self.local_sgd = LocalSGD(self.dp, sync_every)
        if zero or precision != "fp32":  # the optimizer steps masters: owned blocks or copies
            owned = self.dp.owned if zero else [p.data for p in self.model.parameters()]
            if zero and initial is not None:
                initial = self.dp.blocks_of(initial, dtype)
            scaler = (loss_scaler or LossScaler()) if precision == "fp16" else None
            self.master = MasterWeights(owned, make_optimizer, dtype, initial, scaler, comm)
            self.optimizer = self.master.optimizer
        else:
            self.optimizer = make_optimizer(self.model.parameters())
        self.forward = (Recomputed(self.model, self.accounting.meter)
                        if recompute and self.pipe is None else self.model)
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
            self.model.zero_grad()
        n, stats, batch, K = len(y), StepStats(0.0, 0, 0), global_batch_size, self.grad_accum
        if self.master is not None:  # fp16 scales the loss by S: Σ ℓ / (B / S)
            batch = global_batch_size / self.master.scale
        if x.dtype != self.compute_dtype:
            x = x.astype(self.compute_dtype)
        for k in range(K):  # gradient accumulation: K micro-steps, synchronised after the last
            rows = slice(n * k // K, n * (k + 1) // K)
            with self.dp.no_sync() if self.dp is not None and k < K - 1 else _NULL:
                stats = stats + self._forward_backward(x[rows], y[rows], batch)
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
                self._update()
        if self.local_sgd is not None:
            self.local_sgd.after_update(n, global_batch_size)
        if self.balancer is not None and self.mesh.dp > 1:
            weights = self.balancer.update(self.mesh.dp_comm, n, compute_s)
            if weights is not None:
                self.sampler.set_weights(weights)
        if self.steps < 2:  # what is held is the same every step from the first one on
            self.accounting.sample(held_arrays(self))
        return stats

    def _forward_backward(self, x, y, batch) -> StepStats:
        """Forward and backward of (x, y), the loss Σ ℓ / ``batch``; stats over its samples."""
        if not len(y) and (self.zero < 2 or self.pipe is not None):
            return StepStats(0.0, 0, 0)  # adds zeros (ZeRO 2-3 run it: it holds collectives)
        if self.pipe is not None:
            return self.pipe.train_step(x, y, batch)
        count = len(y) > self._rows  # activations are measured for each new, larger batch
        self._rows = max(self._rows, len(y))
        if self.recompute:
            self.forward.meter = self.accounting.meter if count else None
        with self._span("forward"):
            logits = self.forward(Tensor(x))
            loss = self.loss_fn(logits, y) * (1.0 / batch)
        held = self.accounting.meter.hold_bytes(graph_bytes(loss)) if count else 0
        with self._span("backward"):
            loss.backward()
        self.accounting.meter.release(held)
        return step_stats(loss.item() * batch, logits.data, y)

    def _update(self) -> None:
        """The optimizer's step: on the model's parameters, or on the masters (then ZeRO
        gathers the updated blocks)."""
        if self.master is None:
            self.optimizer.step()
            return
        grads = (self.dp.owned_grads if self.zero
                 else [p.grad for p in self.model.parameters()])
        if self.master.step(grads) and self.zero:
            self.dp.after_update()

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
        x = x[lo:hi].astype(self.compute_dtype, copy=False)
        if self.pipe is not None:
            local = self.pipe.evaluate(x, y[lo:hi], batch_size)
        else:  # ZeRO-3 gathers the whole model once (replicas may score unequal chunks)
            with self.dp.full_values() if self.zero == 3 else _NULL:
                local = evaluate_model(self.model, x, y[lo:hi], batch_size, self.loss_fn)
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

    def memory_bytes(self) -> dict:
        """This rank's memory by kind (``memory.KINDS``), measured: the most held so far."""
        self.accounting.sample(held_arrays(self))
        return self.accounting.report(self.pipe.meter.peak_bytes if self.pipe else None)

    def memory_predicted(self) -> dict:
        """What the formulas of ``memory.predict`` say this rank holds, by kind."""
        return predicted(self, self._rows)

    def scaler_report(self) -> dict:
        """With fp16: the ``loss_scale`` now and the ``skipped_steps`` (overflows); else {}."""
        scaler = self.master.scaler if self.master is not None else None
        return {} if scaler is None else {"loss_scale": scaler.scale,
                                          "skipped_steps": scaler.skipped_steps}

    # ---- state: with masters, the masters (whole, full precision) are the parameters
    def state_dict(self) -> dict:
        return save_state(self) if self.master is not None else super().state_dict()

    def load_state_dict(self, state: dict) -> None:
        return load_state(self, state) if self.master is not None else super().load_state_dict(state)

    def full_parameters(self) -> dict:
        with master_values(self):
            return super().full_parameters()

def _width(stage, which: str) -> int:
    """Width entering (``in_features``) or leaving (``out_features``) a stage."""
    layers = [m for m in stage if hasattr(m, which)]
    return getattr(layers[0] if which == "in_features" else layers[-1], which)


class SingleProcess(ParallelStrategy):
    """One process computes everything (the 1 × 1 × 1 grid): the reference every layout equals."""

    def __init__(self, model, optimizer, loss_fn=sum_cross_entropy):
        super().__init__(Mesh(LocalComm()), model, lambda params: optimizer, loss_fn=loss_fn)
