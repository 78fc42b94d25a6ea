"""The explicit rank grid of a hybrid run: dp × pp × tp = world size.

Ranks 0 … W−1 are laid out as one reshaped range, ``grid = arange(W).reshape(dp, pp, tp)``
(tensor parallel fastest, so a tensor-parallel group is made of neighbouring ranks, which talk
the most). A rank's coordinates (d, p, t) name its groups:

- tensor group: the tp ranks ``grid[d, p, :]`` (they shard the same layers);
- pipeline group: the pp ranks ``grid[d, :, t]`` (stage 0 … pp−1 of one model replica);
- data group: the dp ranks ``grid[:, p, t]`` (the same shard of the model, different data).

>>> print(Mesh.grid_text(dp=2, tp=2, pp=1))
dp 0: pp 0: [0 1]
dp 1: pp 0: [2 3]

``Mesh(comm, dp, tp, pp)`` builds the three sub-communicators with ``comm.split`` (a collective:
every rank builds its mesh at the same point). A group of one rank is a ``LocalComm`` and a group
of every rank is ``comm`` itself, so a data-parallel-only grid talks over the job's communicator. ``check_layout`` rejects an impossible layout
with one line before any worker starts.
"""

from __future__ import annotations

import numpy as np

from ..comm.local import LocalComm
from .pipeline import partition_sizes


def grid(dp: int, tp: int, pp: int) -> np.ndarray:
    """The rank grid: ``grid[d, p, t]`` is the rank at data index d, stage p, shard t."""
    return np.arange(dp * pp * tp).reshape(dp, pp, tp)


class Mesh:
    """This rank's place in the dp × pp × tp grid and its three group communicators."""

    def __init__(self, comm, dp: int = 1, tp: int = 1, pp: int = 1):
        if dp * tp * pp != comm.world_size:
            raise ValueError(f"--dp {dp} × --tp {tp} × --pp {pp} = {dp * tp * pp} does not match "
                             f"the {comm.world_size} workers")
        self.comm, self.dp, self.tp, self.pp = comm, int(dp), int(tp), int(pp)
        self.grid = grid(dp, tp, pp)
        d, p, t = (int(i[0]) for i in np.nonzero(self.grid == comm.rank))
        self.dp_rank, self.pp_rank, self.tp_rank = d, p, t
        # Colors number the groups; the key (the global rank) orders ranks inside a group.
        self.tp_comm = self._group(tp, color=d * pp + p)
        self.pp_comm = self._group(pp, color=d * tp + t)
        self.dp_comm = self._group(dp, color=p * tp + t)

    def _group(self, size: int, color: int):
        """The communicator of this rank's group of ``size`` ranks (same size on every rank,
        so every rank takes the same branch and the splits stay collective)."""
        if size == 1:
            return LocalComm()
        if size == self.comm.world_size:
            return self.comm
        return self.comm.split(color=color, key=self.comm.rank)

    def comms(self) -> tuple:
        """The three group communicators: tensor, pipeline, data."""
        return (self.tp_comm, self.pp_comm, self.dp_comm)

    @property
    def coords(self) -> tuple:
        return (self.dp_rank, self.pp_rank, self.tp_rank)

    @staticmethod
    def grid_text(dp: int, tp: int, pp: int) -> str:
        """The grid as text: one line per (dp, pp) pair listing its tensor group's ranks."""
        g = grid(dp, tp, pp)
        return "\n".join(f"dp {d}: pp {p}: {g[d, p]}" for d in range(dp) for p in range(pp))

    def close(self) -> None:
        for sub in self.comms():
            if sub is not self.comm:
                sub.close()

    def __repr__(self):
        return (f"<Mesh rank {self.comm.rank} at dp {self.dp_rank}/{self.dp}, "
                f"pp {self.pp_rank}/{self.pp}, tp {self.tp_rank}/{self.tp}>")


def check_layout(cfg, sizes) -> int:
    """Raise ValueError (one line) unless ``cfg``'s dp × tp × pp layout fits the MLP ``sizes``.

    Checks: the degrees multiply to the world size; the device is the CPU; no more pipeline
    stages than layers; no more tensor shards than the features of any sharded layer; the
    micro-batches divide each data-parallel shard of the batch. Returns the world size.
    """
    dp, tp, pp = int(cfg.dp), int(cfg.tp), int(cfg.pp)
    world = dp * tp * pp
    if cfg.workers is not None and cfg.workers != world:
        raise ValueError(f"--workers {cfg.workers} does not match --dp {dp} × --tp {tp} × "
                         f"--pp {pp} = {world}")
    if getattr(cfg, "device", "cpu") == "gpu" and tp * pp > 1:
        raise ValueError("tensor and pipeline parallelism move NumPy arrays between worker "
                         "processes; use --device cpu with --tp/--pp")
    layers = len(sizes) - 1
    if pp > layers:
        raise ValueError(f"--pp {pp} asks for more pipeline stages than the model's {layers} "
                         f"Linear layers ({'-'.join(map(str, sizes))})")
    if tp > 1:
        for stage in partition_sizes(sizes, pp):
            # inside a stage, Linear layers alternate column (shards its outputs) and row
            # (shards its inputs, which are the previous column layer's outputs)
            for k, (n_in, n_out) in enumerate(stage):
                width = n_out if k % 2 == 0 else n_in
                if width < tp:
                    raise ValueError(f"--tp {tp} asks for more shards than the {width} features "
                                     f"of the Linear({n_in}, {n_out}) layer")
    if pp > 1:
        shard = cfg.batch_size // dp
        if cfg.batch_size % dp or shard % cfg.micro_batches:
            raise ValueError(f"--micro-batches {cfg.micro_batches} does not divide the batch: "
                             f"--batch-size {cfg.batch_size} over --dp {dp} gives "
                             f"{cfg.batch_size / dp:g} samples per pipeline")
    return world
