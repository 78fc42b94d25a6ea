"""ZeRO: shard across the data group what data parallelism replicates (Rajbhandari et al., 2020).

Plain data parallelism keeps on each of P ranks the parameters θ, the gradients g and the
optimizer state. ZeRO cuts each flat group of parameters into P equal blocks (zero-padded to a
multiple of P) and makes rank r the owner of block r of every group:

    stage 1  ĝ_r = Σ_q g_q[block r]              reduce-scatter (instead of an all-reduce)
             θ[block r] ← step(θ[block r], ĝ_r)  only 1/P of the optimizer state
             θ = [θ[block 0] | … | θ[block P−1]]  all-gather of the updated blocks
    stage 2  as 1, and each group is reduce-scattered as soon as backward has finished it:
             a rank holds ĝ_r (1/P of the gradients) and one group in flight
    stage 3  as 2, and a rank holds only θ[block r] (1/P of the parameters): a layer is
             all-gathered just before its forward and again before its backward
             (all-gather forward, reduce-scatter of ∂θ backward: a conjugate pair)

Reduce-scatter then all-gather send the bytes of one all-reduce, and every backend folds them in
the same rank order as its all-reduce, so ĝ_r has the very bits of plain data parallelism's sum:
stages 1-3 give bitwise the same parameters. (Stages 2-3 reduce each micro-step of gradient
accumulation as it ends and add the sums, Σ_k Σ_q, where plain data parallelism adds the
micro-steps first, Σ_q Σ_k: equal to rounding, ≤ 1e-12 in float64.)

Groups are ``data_parallel.bucket_layout``'s buckets for stages 1-2; for stage 3 one group per
layer (a module that owns parameters). Groups are numbered from the last layer to the first, the
order in which backward finishes them; stage 3 assumes layers run one after another, as in a
``Sequential``. The optimizer side (which steps the owned blocks) is ``masters.MasterWeights``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np

from ..autograd import Tensor
from .data_parallel import bucket_layout


class _Group:
    """Parameters flattened one after another: offsets, size n, padded size, block of P."""

    __slots__ = ("block", "n", "offsets", "padded", "params")

    def __init__(self, params, world_size: int):
        self.params = params
        self.offsets = np.cumsum([0] + [p.data.size for p in params]).tolist()
        self.n = self.offsets[-1]
        self.block = -(-self.n // world_size)
        self.padded = self.block * world_size

    def views(self, flat) -> list:
        """One parameter-shaped view of ``flat`` per parameter."""
        return [flat[a:b].reshape(p.data.shape)
                for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]

    def flatten(self, arrays, dtype) -> np.ndarray:
        """The padded flat concatenation of ``arrays`` (one per parameter)."""
        flat = np.zeros(self.padded, dtype)
        for v, a in zip(self.views(flat), arrays):
            v[...] = a
        return flat


class ZeroDataParallel:
    """ZeRO stage ``stage`` (1, 2 or 3) over ``comm``, the data group, for ``module``.

    Like ``DataParallel``: ``zero_grad()``, backward, ``sync_gradients()``; then the optimizer
    steps ``owned`` with ``owned_grads`` (one flat block per group) and ``after_update()``
    gathers the parameters (stages 1-2). ``no_sync()`` accumulates locally in stage 1; stages
    2-3 reduce-scatter every backward anyway (their gradients are shards), flushing on exit.
    """

    def __init__(self, module, comm, stage: int, bucket_bytes: int = 1 << 20):
        if stage not in (1, 2, 3):
            raise ValueError(f"ZeRO stage must be 1, 2 or 3, not {stage!r}")
        self.module, self.comm, self.stage = module, comm, stage
        P, r = comm.world_size, comm.rank
        params = [p for p in module.parameters() if p.requires_grad]
        if stage < 3:
            layout = bucket_layout([p.data.nbytes for p in params],
                                   [p.data.dtype for p in params], bucket_bytes)
            self.groups = [_Group([params[i] for i in ids], P) for ids in layout]
        else:
            units = [m for m in module.modules() if any(p.requires_grad
                                                        for p in m._parameters.values())]
            self.groups = [_Group([p for p in m._parameters.values() if p.requires_grad], P)
                           for m in reversed(units)]
        dtype = params[0].data.dtype
        largest = max(g.padded for g in self.groups)
        self.require_sync, self.summoned = True, False
        self.sync_seconds, self.sync_bytes = 0.0, 0
        mine = [slice(r * g.block, (r + 1) * g.block) for g in self.groups]
        if stage < 3:  # whole parameters, as views of one flat buffer per group
            self.flat = [comm.zeros((g.padded,), dtype) for g in self.groups]
            self.owned = [f[s] for f, s in zip(self.flat, mine)]
            for g, f in zip(self.groups, self.flat):
                f[...] = g.flatten([p.data for p in g.params], dtype)
                for p, v in zip(g.params, g.views(f)):
                    p.data = v
        else:  # only the owned blocks; every layer's parameters view one gather buffer
            self.gather_buffer = comm.zeros((largest,), dtype)
            self.owned = []
            for g, s in zip(self.groups, mine):
                shard = comm.zeros((g.block,), dtype)
                shard[...] = g.flatten([p.data for p in g.params], dtype)[s]
                self.owned.append(shard)
                for p, v in zip(g.params, g.views(self.gather_buffer)):
                    p.data = v
            for k, unit in enumerate(reversed(units)):
                self._wrap_forward(k, unit)
        if stage == 1:  # whole gradients in flat buffers; the owned block is reduced in place
            self.grads = [comm.zeros((g.padded,), dtype) for g in self.groups]
            self.grad_views = [g.views(b) for g, b in zip(self.groups, self.grads)]
            self.owned_grads = [b[s] for b, s in zip(self.grads, mine)]
        else:  # owned blocks, and one staging buffer the group in flight is summed into
            self.staging = comm.zeros((largest,), dtype)
            self.grad_views = [g.views(self.staging) for g in self.groups]
            self.owned_grads = [np.zeros(g.block, dtype) for g in self.groups]
            for k, g in enumerate(self.groups):
                for p in g.params:
                    p.register_post_accumulate_grad_hook(self._arrived(k))
        self.zero_grad()

    def parameters(self):
        return self.module.parameters()

    # ---- gradients
    def zero_grad(self) -> None:
        if self.stage == 1:
            for b, g, views in zip(self.grads, self.groups, self.grad_views):
                b.fill(0)
                for p, v in zip(g.params, views):
                    p.grad = v
            return
        for b in self.owned_grads:
            b.fill(0)
        self._arm()

    def _arm(self) -> None:
        """Ready for a backward: every group pending, the first one's gradients in staging."""
        self._pending = [len(g.params) for g in self.groups]
        self._next = 0
        self._point(0)

    def _point(self, k: int) -> None:
        """Group k's ``.grad`` become views of the zeroed staging buffer (a gradient that
        arrived before its turn is moved in)."""
        self.staging[:self.groups[k].padded].fill(0)
        for p, v in zip(self.groups[k].params, self.grad_views[k]):
            if p.grad is not None and p.grad is not v:
                v[...] = p.grad
            p.grad = v

    def _arrived(self, k: int):
        """Hook of group k's parameters: count one in; flush the groups now complete, in order."""
        def on_final_grad(_param):
            if self._pending[k] <= 0:
                raise RuntimeError("ZeRO: a parameter got a second gradient in one backward; "
                                   "stages 2-3 need each parameter used once per pass")
            self._pending[k] -= 1
            while self._next < len(self.groups) and self._pending[self._next] == 0:
                self._flush(self._next)
        return on_final_grad

    def _flush(self, k: int) -> None:
        """ĝ_r += reduce-scatter of group k (from staging); its ``.grad`` are dropped."""
        g = self.groups[k]
        for p, v in zip(g.params, self.grad_views[k]):
            if p.grad is None:
                v.fill(0)
            elif p.grad is not v:
                v[...] = p.grad
            p.grad = None
        self.owned_grads[k] += self._timed(self.comm.reduce_scatter, self.staging[:g.padded])
        self._next = k + 1
        if self._next < len(self.groups):
            self._point(self._next)

    def sync_gradients(self) -> None:
        """Stage 1: reduce-scatter every group, the owned block written back in place. Stages
        2-3: flush the groups backward left (unused parameters, or a rank with no samples)."""
        if self.stage > 1:
            while self._next < len(self.groups):
                self._flush(self._next)
            return
        if not self.require_sync:
            return
        for b, g, views, own in zip(self.grads, self.groups, self.grad_views, self.owned_grads):
            for p, v in zip(g.params, views):
                if p.grad is not v:  # replaced behind our back: None, or a fresh array
                    v[...] = 0 if p.grad is None else p.grad
                    p.grad = v
            own[...] = self._timed(self.comm.reduce_scatter, b)

    @contextmanager
    def no_sync(self):
        """Stage 1: accumulate locally until the next ``sync_gradients``. Stages 2-3: the
        backward inside still reduce-scatters; on exit the rest is flushed and re-armed."""
        previous, self.require_sync = self.require_sync, False
        try:
            yield self
        finally:
            self.require_sync = previous
            if self.stage > 1:
                self.sync_gradients()
                self._arm()

    # ---- parameters
    def after_update(self) -> None:
        """Stages 1-2: all-gather the updated blocks into every rank's whole parameters."""
        if self.stage < 3:  # (a copy: shm reads a peer's arena array at this view's offset,
            for f, own in zip(self.flat, self.owned):  # and the owned blocks' offsets differ)
                f[...] = self._timed(self.comm.allgather, own.copy())

    def _gather(self, k: int) -> None:
        g = self.groups[k]
        self.gather_buffer[:g.padded] = self._timed(self.comm.allgather, self.owned[k])

    def _wrap_forward(self, k: int, unit) -> None:
        """Stage 3: ``unit``'s forward gathers its parameters first, and marks its output so
        that backward gathers them again just before the unit's own backward runs."""
        inner = unit.forward

        def regather(g):
            self._gather(k)
            return (g,)

        def forward(*args, **kwargs):
            if not self.summoned:
                self._gather(k)
            out = inner(*args, **kwargs)
            if isinstance(out, Tensor) and out.requires_grad and not self.summoned:
                out = Tensor._make(out.data, (out,), regather)
            return out
        object.__setattr__(unit, "forward", forward)

    @contextmanager
    def full_values(self, blocks=None):
        """While inside, every parameter holds its whole values, all-gathered from ``blocks``
        (one flat block per group, e.g. full-precision masters; default: the owned blocks),
        and stage 3 gathers nothing more (evaluation, saving, checkpoints). A collective."""
        blocks = self.owned if blocks is None else blocks
        saved = [[p.data for p in g.params] for g in self.groups]
        try:
            for g, b in zip(self.groups, blocks):
                full = self._timed(self.comm.allgather, np.array(b, copy=True))
                for p, v in zip(g.params, g.views(full)):
                    p.data = v
            self.summoned = True
            yield
        finally:
            self.summoned = False
            for g, datas in zip(self.groups, saved):
                for p, data in zip(g.params, datas):
                    p.data = data

    def blocks_of(self, arrays, dtype) -> list:
        """This rank's block of each group, cut from ``arrays`` (one per parameter, in
        ``module.parameters()`` order): where full-precision masters start from."""
        where = {id(p): i for i, p in enumerate(self.module.parameters())}
        r = self.comm.rank
        return [g.flatten([arrays[where[id(p)]] for p in g.params], dtype)
                [r * g.block:(r + 1) * g.block] for g in self.groups]

    # ---- bookkeeping
    def _timed(self, collective, array):
        t0, b0 = time.perf_counter(), self.comm.stats.bytes_sent
        out = collective(array)
        self.sync_seconds += time.perf_counter() - t0
        self.sync_bytes += self.comm.stats.bytes_sent - b0
        return out

    def arrays(self) -> dict:
        """What ZeRO holds, by kind (for the memory tracker)."""
        if self.stage < 3:
            params = list(self.flat)
        else:
            params = [*self.owned, self.gather_buffer]
        grads = list(self.grads) if self.stage == 1 else list(self.owned_grads)
        return {"parameters": params, "gradients": grads,
                "buffers": [self.staging] if self.stage > 1 else []}
