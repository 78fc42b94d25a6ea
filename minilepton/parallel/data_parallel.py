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
from contextlib import contextmanager

from .. import backend
from ..comm.device_staging import DeviceStagingComm
from .compression import NoCompression, make_compressor


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


class _Bucket:
    """One contiguous buffer of the communicator (``comm.zeros``) and the parameter-shaped
    views into it, one per parameter: the ``.grad`` arrays backward adds into."""

    __slots__ = ("buffer", "params", "views")

    def __init__(self, comm, params):
        total = sum(p.data.size for p in params)
        self.buffer = comm.zeros((total,), params[0].data.dtype)
        self.params, self.views, offset = params, [], 0
        for p in params:
            self.views.append(self.buffer[offset:offset + p.data.size].reshape(p.data.shape))
            offset += p.data.size


class DataParallel:
    """Wrap ``module`` so that its gradients are summed (or averaged) over ``comm``'s ranks.

    Use: ``dp.zero_grad(); loss = f(dp(x)); dp.backward(loss); optimizer.step()``, where
    ``backward`` is ``loss.backward()`` followed by ``sync_gradients()`` (or call them yourself).
    ``reduce="mean"`` divides the sum by P (each rank's loss a mean over equal shards);
    ``reduce="sum"`` suits losses already divided by the global batch size. ``compress`` is
    ``None``, ``"fp16"`` or ``"topk:RATIO"`` (see ``compression``). Inside ``with dp.no_sync():``
    gradients accumulate locally and the next synchronised step all-reduces the total.
    ``overlap.OverlappedDataParallel`` sends each bucket while backward still runs.

    Parameters on a GPU need ``comm`` staged through the host (``wrap_for_device(comm, "gpu")``
    of ``minilepton.comm.device_staging``): its ``zeros`` gives GPU buckets, and each bucket's
    all-reduce copies it to the arena and back (counted in ``comm.staging``). Compression runs
    on the CPU only.
    """

    def __init__(self, module, comm, bucket_bytes: int = 1 << 20, reduce: str = "mean",
                 compress=None, broadcast: bool = True):
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be 'mean' or 'sum', not {reduce!r}")
        self.module, self.comm, self.reduce = module, comm, reduce
        self.bucket_bytes = int(bucket_bytes)
        self.compressor = compress if hasattr(compress, "allreduce_sum") else make_compressor(compress)
        self.require_sync = True
        params = [p for p in module.parameters() if p.requires_grad]
        self.on_gpu = bool(params) and backend.device_of(params[0].data) != "cpu"
        if self.on_gpu:
            _check_gpu(comm, self.compressor)
        layout = bucket_layout([p.data.nbytes for p in params], [p.data.dtype for p in params],
                               self.bucket_bytes)
        self.buckets = [_Bucket(comm, [params[i] for i in group]) for group in layout]
        self.sync_seconds = 0.0  # wall time the step waited for synchronisation
        self.sync_bytes = 0      # bytes this rank sent while synchronising
        if broadcast:
            self.broadcast_parameters()
        self.zero_grad()

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

    def _reduce_bucket(self, key: int) -> None:
        """Σ_r bucket_r (÷ P for ``mean``), in place, in rank order."""
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
        """All-reduce every bucket, in bucket order (skipped inside ``no_sync``)."""
        if not self.require_sync:
            return
        t0, bytes0 = time.perf_counter(), self.comm.stats.bytes_sent
        for key, b in enumerate(self.buckets):
            self._gather_strays(b)
            self._reduce_bucket(key)
        self.sync_seconds += time.perf_counter() - t0
        self.sync_bytes += self.comm.stats.bytes_sent - bytes0

    def backward(self, loss) -> None:
        loss.backward()
        self.sync_gradients()

    def arrays(self) -> dict:
        """What the buckets hold, by kind (for the memory tracker): the gradients."""
        return {"gradients": [b.buffer for b in self.buckets]}

    @contextmanager
    def no_sync(self):
        """Accumulate gradients locally (gradient accumulation); sync on the next step after."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield self
        finally:
            self.require_sync = previous


def _check_gpu(comm, compressor) -> None:
    """GPU buckets need a communicator that stages them through host memory."""
    if not isinstance(comm, DeviceStagingComm):
        raise TypeError("parameters on the GPU need a communicator staged through the "
                        "host: minilepton.comm.device_staging.wrap_for_device(comm, 'gpu')")
    if not isinstance(compressor, NoCompression):
        raise ValueError(f"--compress {compressor.name} runs on the CPU; on a GPU use none")
