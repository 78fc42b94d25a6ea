"""Overlap: all-reduce a bucket while backward is still computing earlier layers' gradients.

Backward finishes the last layer first, and buckets are filled from the last parameter to the
first (``data_parallel.bucket_layout``). So bucket 0 is complete while backward still works on
the first layers. ``OverlappedDataParallel`` registers a post-accumulate hook on every parameter
(``Tensor.register_post_accumulate_grad_hook``: in Kahn's order a leaf's gradient is final when
the hook fires); when the last gradient of bucket k has arrived, and every bucket before it has
left, the bucket's all-reduce starts on one communication thread. Buckets leave in index order
on every rank, so collectives still match up rank by rank and the sums keep their order: the
result is bitwise the one of ``DataParallel``.

The time is won only if a core is free for the communication thread while backward computes
(measure: ``minilepton bench scaling --overlap both``). It assumes each parameter gets one
gradient per backward (a parameter used twice raises). CPU only.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from .data_parallel import DataParallel


class OverlappedDataParallel(DataParallel):
    """``DataParallel`` whose buckets are all-reduced on a thread as soon as they are full."""

    def __init__(self, module, comm, bucket_bytes: int = 1 << 20, reduce: str = "mean",
                 compress=None, broadcast: bool = True):
        super().__init__(module, comm, bucket_bytes, reduce, compress, broadcast)
        if self.on_gpu:
            raise ValueError("overlap runs on the CPU; on a GPU use DataParallel")
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="allreduce")
        for k, b in enumerate(self.buckets):
            hook = self._arrived(k)
            for p in b.params:
                p.register_post_accumulate_grad_hook(hook)

    def zero_grad(self) -> None:
        super().zero_grad()
        self._pending = [len(b.params) for b in self.buckets]  # gradients still to arrive
        self._sent, self._inflight = 0, []
        self._bytes0 = self.comm.stats.bytes_sent

    def _arrived(self, k: int):
        """The hook of bucket k's parameters: count one in, send the buckets now ready."""
        def on_final_grad(_param):
            if not self.require_sync:
                return
            if self._pending[k] <= 0:
                raise RuntimeError("overlap: a parameter got a second gradient after its "
                                   "bucket was sent; use DataParallel for shared parameters")
            self._pending[k] -= 1
            while self._sent < len(self.buckets) and self._pending[self._sent] == 0:
                self._inflight.append(self._thread.submit(self._reduce_bucket, self._sent))
                self._sent += 1
        return on_final_grad

    def sync_gradients(self) -> None:
        """Send what backward left (unused parameters), then wait for every bucket."""
        if not self.require_sync:
            return
        t0 = time.perf_counter()
        for key in range(self._sent, len(self.buckets)):
            self._gather_strays(self.buckets[key])
            self._inflight.append(self._thread.submit(self._reduce_bucket, key))
        self._sent = len(self.buckets)
        for future in self._inflight:
            future.result()
        self._inflight = []
        self.sync_seconds += time.perf_counter() - t0  # only the wait the step still sees
        self.sync_bytes += self.comm.stats.bytes_sent - self._bytes0
