"""The shared-memory communicator: a group of ranks, its control block in the arena, and the
operations that move no reduction (barrier, send/recv, split, zeros); the collectives go
through ``dispatch``.

A group's control block (allocated once, when the group is made) holds, in order:

- one step counter per rank, each on its own cache line (see ``sync``);
- an exchange area, 2 × P lines of int64, for small values (``split``'s colors, offsets);
- the staging ring, ``stage_depth`` × P slots of ``stage_bytes``: a private array taking part
  in a collective goes through it in cache-sized chunks;
- the P × P point-to-point channels (``channels``).

Every operation is a sequence of steps; step s uses buffers ``s % depth`` and ends with all
ranks having arrived at s, so buffers are reused without extra handshakes.
"""

from __future__ import annotations

import logging

import numpy as np

from ..base import CommError, Communicator, verbose_default
from . import dispatch
from .arena import ALIGN_BYTES, ArenaFullError, _round_up
from .channels import Channels
from .config import ShmConfig
from .sync import LINE, wait_counters

log = logging.getLogger(__name__)


class ShmCommunicator(Communicator):
    """A group of ranks talking through one job's shared-memory arena.

    ``arena``: the mapped ``Arena``; ``rank``: this process's rank in the group; ``members``:
    the job-wide rank of each group rank; ``offset``: where the group's control block starts.
    """

    backend_name = "shm"

    def __init__(self, arena, rank, members, offset, config: ShmConfig | None = None,
                 link=None, verbose: bool | None = None):
        super().__init__(rank, len(members))
        self.arena, self.members, self.offset = arena, list(members), int(offset)
        self.config = cfg = (config or ShmConfig()).resolve(len(members))
        self.link = link
        self.verbose = verbose_default() if verbose is None else verbose
        self.timeout_s = cfg.timeout_s
        self.pipeline_bytes = cfg.pipeline_bytes
        self.arena_min_bytes = cfg.arena_min_bytes
        self.spin_s = cfg.spin_s
        P = self.world_size
        mm = memoryview(arena.mm)
        self._ctr = mm[self.offset:self.offset + P * 64].cast("q")
        self._me = rank * LINE
        self._all = [q * LINE for q in range(P)]
        self._step = 0
        self._xchg = arena.view(self.offset + P * 64, (2, P, LINE), np.int64)
        stage_off = self.offset + _round_up(P * 64 * 3)
        self._stage_raw = arena.view(stage_off, (cfg.stage_depth, P, cfg.stage_bytes), np.uint8)
        if cfg.prefault_ring and P > 1:
            self._map_ring(stage_off)
        self._stage_typed = {}
        self._slot_lists = {}
        self._small_bytes = cfg.stage_bytes  # a private array this small: one staging step
        chan_off = stage_off + _round_up(cfg.stage_depth * P * cfg.stage_bytes)
        self.channels = Channels(arena, chan_off, P, rank, cfg.channel_slots,
                                 cfg.channel_chunk_bytes, cfg.timeout_s, self.members,
                                 self.spin_s)
        self._owners: dict = {}  # id(array from zeros) -> (array, offset, slot bytes, address)
        self._peer_cache: dict = {}
        # the fast paths' caches, made here: one made through ``comm.__dict__`` once left
        # CPython reading every attribute through a dictionary (1 KiB: 2.62 -> 2.98 µs a call)
        self._scratch_arrays: dict = {}  # dtype -> one cache block (fast._scratch)
        self._pull_blocks: dict = {}     # dtype -> a block per peer (single_copy)
        self._single_copy: bool | None = None  # may ranks read each other? (single_copy)

    def _map_ring(self, offset: int) -> None:
        """Map every page of the staging ring now. Left to itself, a slot's pages fault in,
        4 KiB at a time, inside the first call that uses the slot: calls of the same size take
        one slot in two (two steps each), so after an odd step (a barrier) a warm job met
        about 1,100 page faults in its next 1 MiB all-reduces (P = 2). Where the machine's
        shared memory has no room for the whole ring, the pages come when used, as before."""
        try:
            self.arena.back(offset, self._stage_raw.nbytes)
        except OSError:
            return
        int(self._stage_raw.reshape(-1)[::ALIGN_BYTES].max())  # one read per page maps it

    # ---- steps: post "arrived at s", wait for everyone
    def _sync(self, what: str) -> int:
        s = self._step = self._step + 1
        self._ctr[self._me] = s
        wait_counters(self._ctr, self._all, s, self.timeout_s, what, self.members,
                      self.spin_s)
        return s

    def _exchange(self, values) -> np.ndarray:
        """Every rank contributes up to 8 int64 values; everyone gets the (P, 8) table."""
        s = self._step + 1
        row = self._xchg[s % 2, self.rank]
        row[:] = 0
        row[:len(values)] = values
        self._sync("exchange")
        return self._xchg[s % 2].copy()

    def stage(self, dtype) -> np.ndarray:
        """The staging ring seen as ``dtype``: shape (depth, P, elements per slot)."""
        dt = np.dtype(dtype)
        got = self._stage_typed.get(dt)
        if got is None:
            got = self._stage_typed[dt] = self._stage_raw.view(dt)
        return got

    def slots(self, dtype):
        """The same ring as nested lists ``[step % depth][rank]`` of 1-D arrays (cheaper to
        slice, chunk after chunk, than the 3-D view)."""
        got = self._slot_lists.get(dtype)
        if got is None:
            st = self.stage(dtype)
            got = self._slot_lists[dtype] = [list(st[k]) for k in range(st.shape[0])]
        return got

    def _say(self, text: str) -> None:
        """One verbose line (the worker's log prefix already names the job-wide rank)."""
        if self.members == list(range(self.world_size)):
            log.info("%s", text)
        else:
            log.info("[group %s, rank %d] %s", self.members, self.rank, text)

    # ---- arena arrays
    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        """An array of zeros living in the arena (collective: every rank of the group calls it
        with the same shape and dtype, in the same order). Collectives on it (or on a
        contiguous view of it) read peers' data in place instead of copying it; every rank
        must then pass its own such array (the arena and private paths take different steps)."""
        dt = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(int(n) for n in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        slot = _round_up(max(nbytes, 1), ALIGN_BYTES)
        return self._alloc_slots(slot, f"zeros{shape} {dt}", shape, dt)

    def _alloc_slots(self, slot, what, shape, dt):
        err, off = None, 0
        if self.rank == 0:
            try:
                off = self.arena.alloc(slot * self.world_size, what)
            except ArenaFullError as exc:
                err, off = exc, -1
        off = int(self._exchange([off])[0, 0])
        if off < 0:
            raise err or ArenaFullError(f"{what}: does not fit in the shared-memory arena")
        arr = self.arena.view(off + self.rank * slot, shape, dt)
        self._owners[id(arr)] = (arr, off, slot, arr.__array_interface__["data"][0])
        return arr

    def in_arena(self, flat: np.ndarray) -> bool:
        """Is ``flat`` an arena array of this group, or a view of one (see ``peers_of``)?"""
        base = flat.base
        return (base is not None and id(base) in self._owners) or id(flat) in self._owners

    def peers_of(self, flat: np.ndarray):
        """For an arena array of this group (or a contiguous view of one): every rank's matching
        flat view, in rank order. For any other array: None.

        NumPy gives every view of an array that does not own its memory that array as its
        ``base``, so the test is one dictionary look-up of the array ``zeros`` returned.
        """
        base = flat.base
        info = self._owners.get(id(base)) if base is not None else None
        if info is None:
            info = self._owners.get(id(flat))
            if info is None:
                return None
        owner, off, slot, address = info
        whole = flat.size == owner.size and flat.dtype == owner.dtype  # contiguous: at 0
        inner = 0 if whole else flat.__array_interface__["data"][0] - address
        key = (off, inner, flat.size, flat.dtype)
        got = self._peer_cache.get(key)
        if got is None:
            if len(self._peer_cache) > 4096:
                self._peer_cache.clear()
            got = self._peer_cache[key] = tuple(
                self.arena.view(off + q * slot + inner, (flat.size,), flat.dtype)
                for q in range(self.world_size))
        return got

    # ---- group operations
    def barrier(self) -> None:
        with self._timed("barrier", 0, 0):
            if self.verbose:
                self._say("barrier")
            self._sync("barrier")

    def split(self, color, key=None) -> ShmCommunicator | None:
        """Collective over this group: ranks passing the same ``color`` (an int >= 0) form a new
        group, ordered by ``(key, rank)``; ``color=None`` joins no group and gets None."""
        if color is not None and (int(color) != color or color < 0):
            raise ValueError(f"split color must be an int >= 0 or None, not {color!r}")
        key = self.rank if key is None else int(key)
        table = self._exchange([-1 if color is None else int(color), key])
        if color is None:
            self._exchange([0])  # keep step with the ranks that do allocate
            return None
        group = sorted((int(table[q, 1]), q) for q in range(self.world_size)
                       if table[q, 0] == color)
        ranks = [q for _, q in group]
        new_rank = ranks.index(self.rank)
        err, off = None, 0
        if new_rank == 0:
            try:
                off = self.arena.alloc(self.config.block_bytes(len(ranks)), "a split group",
                                       reserve=False)
            except ArenaFullError as exc:
                err, off = exc, -1
        offs = self._exchange([off])
        off = int(offs[ranks[0], 0])
        if off < 0:
            raise err or ArenaFullError("split: the new group's buffers do not fit in the arena")
        if self.verbose:
            self._say(f"split color={color} key={key} -> rank {new_rank} of {len(ranks)} "
                      f"(members {[self.members[q] for q in ranks]})")
        return ShmCommunicator(self.arena, new_rank, [self.members[q] for q in ranks], off,
                               self.config, self.link, self.verbose)

    def send(self, x, dst: int) -> None:
        x = self.check_array(x, "send")
        dst = self.check_peer(dst, "send")
        with self._timed("send", x.nbytes, 1, critical=(1, x.nbytes)):
            if self.verbose:
                self._say(f"send {x.nbytes} B {x.dtype}{x.shape} -> rank {dst}")
            self.channels.send(x.reshape(-1), dst)

    def recv(self, x, src: int):
        x = self.check_array(x, "recv")
        src = self.check_peer(src, "recv")
        with self._timed("recv", 0, 0):
            if self.verbose:
                self._say(f"recv {x.nbytes} B {x.dtype}{x.shape} <- rank {src}")
            self.channels.recv(x.reshape(-1), src)
        return x

    # ---- the collectives are ``dispatch``'s functions (``self`` is their ``comm``): they check
    # the call, count it, and pick its algorithm from one table
    allreduce = dispatch.allreduce
    reduce_scatter = dispatch.reduce_scatter
    allgather = dispatch.allgather
    broadcast = dispatch.broadcast

    def close(self) -> None:
        self._peer_cache.clear()
        self._stage_typed.clear()


def world_communicator(arena, rank, world_size, offset, config=None, link=None):
    """The job-wide group (made by each worker from the launcher's arena)."""
    if not 0 <= rank < world_size:
        raise CommError(f"rank {rank} outside 0..{world_size - 1}")
    return ShmCommunicator(arena, rank, list(range(world_size)), offset, config, link)
