"""Data parallelism: replicate the model, shard the batch, sum gradients with an all-reduce.

This is the article's §2.1 (and Keras' ``MirroredStrategy`` of its §5). Rank r computes the loss
of its shard S_r of a global batch of B samples as L_r = Σ_{i∈S_r} ℓ_i / B, so

    forward:   L = Σ_r L_r                      (the global-batch mean loss)
    backward:  ∂L/∂θ = Σ_r ∂L_r/∂θ              (one all-reduce of the gradients)

and every rank applies the same update to the same parameters: the computation of one process
with batch B, split by samples. Gradients live in a few contiguous *buckets* allocated in the
communicator's arena (``comm.zeros``); each parameter's ``.grad`` is a view into its bucket, so
backward accumulates straight into the bucket and one all-reduce per bucket moves them all, with
no per-parameter copy. Buckets are filled in reverse parameter order (the order backward
finishes them), each at most ``bucket_bytes`` (a parameter larger than that gets its own).
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext

import numpy as np

from .. import backend
from ..autograd import Tensor
from ..autograd.losses import cross_entropy
from ..strategy import StepStats, Strategy, _stats, evaluate_model
from .balance import DynamicBalancer, parse_node_speeds, static_weights
from .compression import NoCompression, make_compressor
from .sampler import DistributedSampler, shard_offsets


def bucket_layout(nbytes, dtypes, bucket_bytes: int) -> list[list[int]]:
    """Group parameter indices into buckets, walking from the last parameter to the first.

    A bucket closes when adding the next parameter would pass ``bucket_bytes`` or change the
    dtype; a parameter bigger than ``bucket_bytes`` sits alone. Pure: the same on every rank.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be positive, not {bucket_bytes}")
    buckets, current, size, dtype = [], [], 0, None
    for i in reversed(range(len(nbytes))):
        if current and (size + nbytes[i] > bucket_bytes or dtypes[i] != dtype):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
        dtype = dtypes[i]
    if current:
        buckets.append(current)
    return buckets


class _NotifyingGrad(np.ndarray):
    """A bucket view that calls ``on_add()`` after backward adds a gradient into it (overlap)."""

    def __array_finalize__(self, obj):
        self.on_add = None  # arrays computed from a gradient never notify

    def __iadd__(self, other):
        np.add(self, other, out=self)
        if self.on_add is not None:
            self.on_add()
        return self


class _Bucket:
    """One contiguous arena buffer and the parameter-shaped views into it."""

    __slots__ = ("buffer", "params", "views")

    def __init__(self, comm, params, on_add=None):
        total = sum(p.data.size for p in params)
        self.buffer = comm.zeros((total,), params[0].data.dtype)
        self.params, self.views, offset = params, [], 0
        for p in params:
            view = self.buffer[offset:offset + p.data.size].reshape(p.data.shape)
            if on_add is not None:
                view = view.view(_NotifyingGrad)
                view.on_add = on_add
            self.views.append(view)
            offset += p.data.size


class DataParallel:
    """Wrap ``module`` so that its gradients are summed (or averaged) over ``comm``'s ranks.

    Use: ``dp.zero_grad(); loss = f(dp(x)); dp.backward(loss); optimizer.step()``, where
    ``backward`` is ``loss.backward()`` followed by ``sync_gradients()`` (or call them yourself).
    ``reduce="mean"`` divides the sum by P (each rank's loss a mean over equal shards);
    ``reduce="sum"`` suits losses already divided by the global batch size. ``compress`` is
    ``None``, ``"fp16"`` or ``"topk:RATIO"`` (see ``compression``). Inside ``with dp.no_sync():``
    gradients accumulate locally and the next synchronised step all-reduces the total.

    ``overlap=True`` starts a bucket's all-reduce on a communication thread as soon as backward
    has added the gradient of each of its parameters (buckets leave in index order on every
    rank), while backward goes on with earlier layers. It assumes each parameter gets one
    gradient per backward (a parameter used twice raises). Buckets leave early only if backward
    hands each leaf its gradient as soon as the leaf's last consumer has run (a walk in Kahn's
    order does; one that visits all leaves last does not), and the time is won only if a core
    is free for the communication thread (measure: ``minilepton bench scaling --overlap both``).

    Parameters on a GPU need ``comm`` staged through the host (``wrap_for_device(comm, "gpu")``
    of ``minilepton.comm.device_staging``): its ``zeros`` gives GPU buckets, and each bucket's
    all-reduce copies it to the arena and back (counted in ``comm.staging``). Overlap and
    compression run on the CPU only.
    """

    def __init__(self, module, comm, bucket_bytes: int = 1 << 20, reduce: str = "mean",
                 compress=None, broadcast: bool = True, overlap: bool = False):
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
        self.module, self.comm, self.reduce = module, comm, reduce
        self.bucket_bytes = int(bucket_bytes)
        self.compressor = compress if hasattr(compress, "allreduce_sum") else make_compressor(compress)
        self.require_sync = True
        params = [p for p in module.parameters() if p.requires_grad]
        if params and backend.device_of(params[0].data) != "cpu":
            self._check_gpu(comm, overlap, self.compressor)
        layout = bucket_layout([p.data.nbytes for p in params], [p.data.dtype for p in params],
                               self.bucket_bytes)
        self.overlap = bool(overlap)
        if self.overlap:
            from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="allreduce")
        self.buckets = [_Bucket(comm, [params[i] for i in group],
                                self._arrived(k) if self.overlap else None)
                        for k, group in enumerate(layout)]
        self.sync_seconds = 0.0  # wall time spent synchronising (gradients or parameters)
        self.sync_bytes = 0      # bytes this rank sent while synchronising
        if broadcast:
            self.broadcast_parameters()
        self.zero_grad()

    @staticmethod
    def _check_gpu(comm, overlap: bool, compressor) -> None:
        from ..comm.device_staging import DeviceStagingComm  # noqa: PLC0415
        if not isinstance(comm, DeviceStagingComm):
            raise TypeError("parameters on the GPU need a communicator staged through the "
                            "host: minilepton.comm.device_staging.wrap_for_device(comm, 'gpu')")
        if overlap:
            raise ValueError("overlap=True runs on the CPU; on a GPU use overlap=False")
        if not isinstance(compressor, NoCompression):
            raise ValueError(f"--compress {compressor.name} runs on the CPU; on a GPU use none")

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def parameters(self):
        return self.module.parameters()

    def broadcast_parameters(self, root: int = 0) -> None:
        """Make every rank's parameters equal to ``root``'s (through the bucket buffers)."""
        for b in self.buckets:
            for p, view in zip(b.params, b.views):
                view[...] = p.data
            self.comm.broadcast(b.buffer, root)
            for p, view in zip(b.params, b.views):
                p.data[...] = view

    def zero_grad(self) -> None:
        """Zero the buckets and point every ``.grad`` at its view (so backward fills them)."""
        for b in self.buckets:
            b.buffer.fill(0)
            for p, view in zip(b.params, b.views):
                if p.grad is not view:
                    p.grad = view
        if self.overlap:
            self._pending = [len(b.params) for b in self.buckets]
            self._sent, self._inflight = 0, []
            self._bytes0 = self.comm.stats.bytes_sent

    def _arrived(self, k: int):
        """The callback of bucket k's views: count gradients in, send ready buckets in order."""
        def on_add():
            if not self.require_sync:
                return
            if self._pending[k] <= 0:
                raise RuntimeError("overlap=True: a parameter got a second gradient after its "
                                   "bucket was sent; use overlap=False for shared parameters")
            self._pending[k] -= 1
            while self._sent < len(self.buckets) and self._pending[self._sent] == 0:
                self._inflight.append(self._thread.submit(self._reduce_bucket, self._sent))
                self._sent += 1
        return on_add

    def _reduce_bucket(self, key: int) -> None:
        if self.comm.world_size == 1:  # the sum over one rank: nothing to send, or to compress
            return
        b = self.buckets[key]
        self.compressor.allreduce_sum(self.comm, b.buffer, key)
        if self.reduce == "mean":
            b.buffer *= 1.0 / self.comm.world_size

    def _gather_strays(self, b) -> None:
        """A ``.grad`` replaced behind our back (set to None, or a fresh array) goes back in."""
        for p, view in zip(b.params, b.views):
            if p.grad is not view:
                if p.grad is None:
                    view.fill(0)
                else:
                    view[...] = p.grad
                p.grad = view

    def sync_gradients(self) -> None:
        """All-reduce every bucket (skipped inside ``no_sync``)."""
        if not self.require_sync:
            return
        t0, bytes0 = time.perf_counter(), self.comm.stats.bytes_sent
        if self.overlap:  # send what backward left (unused parameters), then wait for all
            bytes0 = self._bytes0
            for key in range(self._sent, len(self.buckets)):
                self._gather_strays(self.buckets[key])
                self._inflight.append(self._thread.submit(self._reduce_bucket, key))
            self._sent = len(self.buckets)
            for future in self._inflight:
                future.result()
            self._inflight = []
        else:
            for key, b in enumerate(self.buckets):
                self._gather_strays(b)
                self._reduce_bucket(key)
        self.sync_seconds += time.perf_counter() - t0  # time the step waited (exposed)
        self.sync_bytes += self.comm.stats.bytes_sent - bytes0

    def backward(self, loss) -> None:
        loss.backward()
        self.sync_gradients()

    @contextmanager
    def no_sync(self):
        """Accumulate gradients locally (gradient accumulation); sync on the next step after."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield self
        finally:
            self.require_sync = previous

    def average_parameters(self, weight: float) -> None:
        """θ ← Σ_r weight_r · θ_r over ranks (local SGD), through the bucket buffers.

        Overwrites the gradient buckets, so call it after the optimizer step.
        """
        t0, bytes0 = time.perf_counter(), self.comm.stats.bytes_sent
        for b in self.buckets:
            xp = backend.xp_of(b.buffer)
            for p, view in zip(b.params, b.views):
                xp.multiply(p.data, weight, out=view)
            self.comm.allreduce(b.buffer, op="sum")
            for p, view in zip(b.params, b.views):
                p.data[...] = view
        self.sync_seconds += time.perf_counter() - t0
        self.sync_bytes += self.comm.stats.bytes_sent - bytes0


def _slow_down(compute_s: float, speed: float) -> None:
    """Simulate a node ``speed`` times as fast: stretch this step's compute to compute_s / speed."""
    if speed < 1.0:
        time.sleep(compute_s * (1.0 / speed - 1.0))


class DataParallelStrategy(Strategy):
    """The ``Strategy`` that ``minilepton train --workers P`` runs on each rank.

    ``sync_every=k > 1`` (or ``local_sgd=True``) is local SGD: no gradient all-reduce; each rank
    steps on its local mean gradient and every k steps the parameters are averaged, weighted by
    the samples each rank computed since the last average (for plain SGD and k=1 this is exactly
    data parallelism, which the tests check).
    ``balance`` is ``none``, ``static`` (shares ∝ ``node_speeds``) or ``dynamic`` (shares from
    measured compute times); ``node_speeds`` also slows this rank's compute to simulate the node.
    A ``minilepton.trace.Tracer`` records forward/backward/optimizer and every collective; the
    timeline is written to ``trace_path`` after each evaluation.
    """

    def __init__(self, comm, model, optimizer, bucket_bytes: int = 1 << 20, compress=None,
                 sync_every: int = 1, node_speeds=None, balance: str = "none",
                 overlap: bool = False, tracer=None, trace_path: str | None = None,
                 local_sgd: bool = False):
        if sync_every < 1:
            raise ValueError(f"--sync-every must be >= 1, not {sync_every}")
        compressor = make_compressor(compress)
        if (sync_every > 1 or local_sgd) and not isinstance(compressor, NoCompression):
            raise ValueError("--compress applies to the gradient all-reduce; "
                             "it cannot be combined with --sync-every > 1")
        if balance not in ("none", "static", "dynamic"):
            raise ValueError(f"--balance must be none, static or dynamic, not {balance!r}")
        self.comm, self.model, self.optimizer = comm, model, optimizer
        self.is_main = comm.rank == 0
        self.sync_every = int(sync_every)
        self.local_sgd = bool(local_sgd) or self.sync_every > 1  # average parameters, not grads
        if node_speeds is None:  # the launcher's simulated cluster, when it set one
            from ..cluster import simulate  # noqa: PLC0415
            node_speeds = simulate.node_speeds()
        self.speeds = parse_node_speeds(node_speeds, comm.world_size)
        self.speed = float(self.speeds[comm.rank])
        self.sampler = DistributedSampler(comm.rank, comm.world_size)
        if balance == "static":
            self.sampler.set_weights(static_weights(self.speeds))
        self.balancer = DynamicBalancer(comm.world_size) if balance == "dynamic" else None
        self.dp = DataParallel(model, comm, bucket_bytes, reduce="sum", compress=compressor,
                               overlap=overlap and not self.local_sgd)
        self.tracer, self.trace_path = tracer, trace_path
        if tracer is not None:
            tracer.watch(comm)
        self.steps = 0
        self.step_seconds = 0.0
        self._since_sync = [0, 0]  # [my samples, global samples] since the last average

    def local_indices(self, global_indices):
        return self.sampler.local_indices(global_indices)

    def train_step(self, x, y, global_batch_size: int) -> StepStats:
        if self.tracer is None:
            return self._step(x, y, global_batch_size)
        with self.tracer.step():
            return self._step(x, y, global_batch_size)

    def _span(self, name: str):
        return self.tracer.span(name) if self.tracer is not None else nullcontext()

    def _step(self, x, y, global_batch_size: int) -> StepStats:
        t0 = time.perf_counter()
        self.dp.zero_grad()
        n = len(y)
        stats = StepStats(0.0, 0, 0)
        if n:  # an empty shard adds zeros to the all-reduce, and still joins it
            with self._span("forward"):
                logits = self.model(Tensor(x))
                loss = cross_entropy(logits, y, reduction="sum") * (1.0 / global_batch_size)
            with self._span("backward"):
                loss.backward()
            stats = _stats(loss.item() * global_batch_size, logits.data, y)
        if self.speed < 1.0:
            with self._span("slow node"):
                _slow_down(time.perf_counter() - t0, self.speed)
        compute_s = time.perf_counter() - t0
        if not self.local_sgd:
            self.dp.sync_gradients()
            with self._span("optimizer"):
                self.optimizer.step()
        else:
            self._local_sgd_step(n, global_batch_size)
        if self.balancer is not None:
            weights = self.balancer.update(self.comm, n, compute_s)
            if weights is not None:
                self.sampler.set_weights(weights)
        self.steps += 1
        self.step_seconds += time.perf_counter() - t0
        return stats

    def _local_sgd_step(self, n: int, global_batch_size: int) -> None:
        if n:
            for b in self.dp.buckets:  # Σ_local/B -> the local mean gradient Σ_local/n
                b.buffer *= global_batch_size / n
            self.optimizer.step()
        self._since_sync[0] += n
        self._since_sync[1] += global_batch_size
        if (self.steps + 1) % self.sync_every == 0:
            self.average_parameters()

    def average_parameters(self) -> None:
        """Local SGD's synchronisation (a no-op when nothing was computed since the last one)."""
        mine, total = self._since_sync
        if total:
            self.dp.average_parameters(mine / total)
        self._since_sync = [0, 0]

    def reduce_stats(self, stats: StepStats) -> StepStats:
        totals = np.array([stats.loss_sum, stats.correct, stats.count], dtype=np.float64)
        self.comm.allreduce(totals, op="sum")
        return StepStats(float(totals[0]), round(totals[1]), round(totals[2]))

    def evaluate(self, x, y, batch_size: int = 1024) -> StepStats:
        """Each rank scores a contiguous slice of (x, y); the totals are all-reduced."""
        if self.local_sgd:
            self.average_parameters()
        offsets = shard_offsets(len(y), np.ones(self.comm.world_size))
        lo, hi = int(offsets[self.comm.rank]), int(offsets[self.comm.rank + 1])
        totals = self.reduce_stats(evaluate_model(self.model, x[lo:hi], y[lo:hi], batch_size))
        if self.tracer is not None and self.trace_path:  # collective: every rank sends
            from ..trace import gather_events, write_chrome_trace  # noqa: PLC0415
            events = gather_events(self.comm, self.tracer)
            if events is not None:
                write_chrome_trace(events, self.trace_path)
        return totals

    def comm_report(self) -> dict:
        """Bytes this rank sent per step and the share of step time spent synchronising."""
        steps = max(self.steps, 1)
        return {"bytes_per_step": self.dp.sync_bytes / steps,
                "comm_seconds_fraction": self.dp.sync_seconds / max(self.step_seconds, 1e-12)}
