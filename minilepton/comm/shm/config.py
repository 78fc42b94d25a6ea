"""The sizes and timings of a shared-memory group's buffers (``ShmCommunicator``'s config).

Fields left to None are filled by ``resolve(world_size)`` for the job at hand: whether every
worker has a core of its own decides how long a wait spins, how big a staging slot is, and
whether the arena all-reduce is pipelined (each wait costs a context switch when workers
outnumber cores, so fewer, larger steps win there), whether the staging ring is mapped up
front, and whether large private arrays are read in the peers' memory.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field

from ...backend import cpu_count
from ..base import timeout_default
from .arena import _round_up
from .channels import Channels
from .sync import spin_default


@dataclass
class ShmConfig:
    """Sizes of a group's buffers, the stall timeout and the busy-wait (see ``shm``)."""

    stage_depth: int = 8                    # staging slots per rank (a ring of them)
    stage_bytes: int | None = None          # bytes per staging slot (None: 1 MiB; 4 MiB when
                                            # workers outnumber cores: fewer waits, each of
                                            # which costs a context switch)
    channel_slots: int = 4                  # pieces in flight per (src, dst) channel
    channel_chunk_bytes: int = 256 << 10    # bytes per channel piece
    timeout_s: float = field(default_factory=timeout_default)
    spin_s: float | None = None             # busy-wait before yielding (None: by cores)
    arena_min_bytes: int = 256 << 10        # smaller arena arrays all-reduce like private
                                            # ones: one wait instead of three beats a copy
    split_min_bytes: int = 256 << 10        # private arrays: above this, each rank
                                            # reduces 1/P of each chunk (two waits, less work)
    single_copy: bool | None = None         # private arrays over single_copy_min_bytes:
                                            # read in the peers' memory (process_vm_readv)
                                            # where the kernel allows (None: with a core
                                            # per worker, as prefault_ring)
    single_copy_min_bytes: int = 4 << 20
    prefault_ring: bool | None = None       # map the whole staging ring when a group is
                                            # made (None: with a core per worker, where it
                                            # is depth x P x 1 MiB); else each slot's pages
                                            # fault in inside the first call that uses it
    pipeline_bytes: int | None = None       # arena all-reduce: piece handed on per step
                                            # (None: one core's L2 cache with a core per
                                            # worker, else off; see l2_bytes)

    def __post_init__(self):
        if self.stage_depth < 3:
            raise ValueError(f"stage_depth must be >= 3, not {self.stage_depth}")
        if not 0 < self.timeout_s < math.inf:  # nan would never time out
            raise ValueError(f"timeout_s must be a finite number of seconds > 0, "
                             f"not {self.timeout_s}")

    def resolve(self, world_size: int, cores: int | None = None) -> ShmConfig:
        """Fill the fields left to None for a job of ``world_size`` workers (in place)."""
        cores = cores or cpu_count()
        dedicated = world_size <= cores
        if self.spin_s is None:
            self.spin_s = spin_default(world_size, cores)
        if self.stage_bytes is None:
            self.stage_bytes = (1 << 20) if dedicated else (4 << 20)
        if self.pipeline_bytes is None:  # pieces mean waits: only worth it on dedicated cores
            self.pipeline_bytes = l2_bytes() if dedicated else 0
        if self.prefault_ring is None:
            self.prefault_ring = dedicated
        if self.single_copy is None:  # it reads no staging slot: with the ring prefaulted,
            self.single_copy = dedicated  # no later call pays for slots it left cold
        return self

    def block_bytes(self, world_size: int) -> int:
        """Bytes of one group's control block."""
        head = _round_up(world_size * 64 * 3)
        stage = _round_up(self.stage_depth * world_size * self.stage_bytes)
        return head + stage + Channels.region_bytes(world_size, self.channel_slots,
                                                    self.channel_chunk_bytes)


@functools.cache
def l2_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache", default: int = 1 << 20) -> int:
    """One core's L2 cache in bytes, as Linux describes it under /sys (``default`` elsewhere).

    The arena all-reduce hands on pieces of this size: a piece a rank folds stays in its cache
    while it works on it, and fewer pieces mean fewer waits. At P = 2 on a 4 MiB-L2 Xeon, 4 MiB
    pieces took a 16 MiB all-reduce from 1.98 to 1.64 ms (1 MiB pieces, the previous default,
    fitted the 1 MiB L2 of the machine they were tuned on; benchmarks/README.md)."""
    try:
        for index in sorted(os.listdir(root)):
            with open(f"{root}/{index}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{root}/{index}/size") as f:
                text = f.read().strip().upper()
            scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        pass
    return default
