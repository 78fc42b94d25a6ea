"""Point-to-point channels in shared memory: one single-producer, single-consumer queue per
ordered pair (src, dst) of a group.

A channel is a ring of ``n_slots`` slots of ``chunk_bytes`` each, plus two counters on their
own cache lines: ``head`` (pieces written, advanced only by the sender) and ``tail`` (pieces
read, advanced only by the receiver). A message is cut into pieces of at most ``chunk_bytes``;
the sender waits while the ring is full (``head - tail == n_slots``), the receiver while it is
empty. So ``send`` returns as soon as the message is in the channel (a pipeline stage can post
several activations before its neighbour asks for them, up to the channel's capacity), and
only a message larger than the capacity waits for the receiver. Each slot carries the total
message size, so a ``recv`` into a buffer of the wrong size fails clearly.
"""

from __future__ import annotations

import numpy as np

from ..base import CommError
from .sync import LINE, wait_value

META_BYTES = 64      # per slot: total message bytes, piece bytes
HEADER_BYTES = 128   # head on one cache line, tail on the next


def channel_bytes(n_slots: int, chunk_bytes: int) -> int:
    return HEADER_BYTES + n_slots * (META_BYTES + chunk_bytes)


class Channels:
    """The P×P channels of one group (the diagonal is unused), seen from rank ``rank``."""

    def __init__(self, arena, offset, world_size, rank, n_slots, chunk_bytes, timeout_s,
                 members, spin_s):
        if chunk_bytes % 64:
            raise ValueError(f"channel chunk_bytes must be a multiple of 64, not {chunk_bytes}")
        self.arena, self.offset = arena, int(offset)
        self.world_size, self.rank = world_size, rank
        self.n_slots, self.chunk_bytes = int(n_slots), int(chunk_bytes)
        self.stride = channel_bytes(n_slots, chunk_bytes)
        self.timeout_s, self.members, self.spin_s = timeout_s, members, spin_s
        self._head = [0] * world_size   # pieces I wrote to each dst (mirror of shared head)
        self._tail = [0] * world_size   # pieces I read from each src (mirror of shared tail)
        self._views = {}

    @staticmethod
    def region_bytes(world_size: int, n_slots: int, chunk_bytes: int) -> int:
        return world_size * world_size * channel_bytes(n_slots, chunk_bytes)

    def _channel(self, src: int, dst: int):
        """(counters memoryview, slot metadata int64 array, slot data uint8 array)."""
        key = (src, dst)
        got = self._views.get(key)
        if got is None:
            base = self.offset + (src * self.world_size + dst) * self.stride
            ctr = memoryview(self.arena.mm)[base:base + HEADER_BYTES].cast("q")
            row = META_BYTES + self.chunk_bytes
            slots = self.arena.view(base + HEADER_BYTES, (self.n_slots, row), np.uint8)
            meta = slots[:, :META_BYTES].view(np.int64)
            got = self._views[key] = (ctr, meta, slots[:, META_BYTES:])
        return got

    # ---- one piece at a time (send/recv/sendrecv are loops over these)
    def _send_piece(self, dst, data, a, b, total):
        ctr, meta, slots = self._channel(self.rank, dst)
        head = self._head[dst]
        if head - ctr[LINE] >= self.n_slots:
            wait_value(ctr, LINE, head - self.n_slots + 1, self.timeout_s,
                       lambda: f"send to rank {self.members[dst]}: channel full and not drained",
                       self.spin_s)
        s = head % self.n_slots
        meta[s, 0] = total
        meta[s, 1] = b - a
        slots[s, :b - a] = data[a:b]
        self._head[dst] = head + 1
        ctr[0] = head + 1

    def _recv_piece(self, src, out, a, b, total, op):
        ctr, meta, slots = self._channel(src, self.rank)
        tail = self._tail[src]
        if ctr[0] <= tail:
            wait_value(ctr, 0, tail + 1, self.timeout_s,
                       lambda: f"recv from rank {self.members[src]}: nothing arrived", self.spin_s)
        s = tail % self.n_slots
        if meta[s, 0] != total or meta[s, 1] != b - a:
            raise CommError(f"recv from rank {self.members[src]}: expected a message of "
                            f"{total} bytes, got {int(meta[s, 0])} (mismatched send/recv)")
        piece = slots[s, :b - a]
        if op is None:
            out.view(np.uint8)[a:b] = piece
        else:
            isz = out.itemsize
            dst = out[a // isz:b // isz]
            op(piece.view(out.dtype), dst, out=dst)
        self._tail[src] = tail + 1
        ctr[LINE] = tail + 1

    def _pieces(self, nbytes: int):
        c = self.chunk_bytes
        return [(a, min(a + c, nbytes)) for a in range(0, nbytes, c)] or [(0, 0)]

    # ---- the public operations, on flat contiguous arrays
    def send(self, flat: np.ndarray, dst: int) -> None:
        data = flat.view(np.uint8)
        for a, b in self._pieces(data.size):
            self._send_piece(dst, data, a, b, data.size)

    def recv(self, flat: np.ndarray, src: int, op=None) -> None:
        """Fill ``flat`` from ``src``; with ``op`` (a ufunc), ``flat = op(received, flat)``."""
        for a, b in self._pieces(flat.nbytes):
            self._recv_piece(src, flat, a, b, flat.nbytes, op)

    def sendrecv(self, send_flat, dst, recv_flat, src, op=None) -> None:
        """Send to ``dst`` and receive from ``src`` piece by piece, interleaved, so that a ring
        of ranks all doing this at once never waits on a full channel forever."""
        data = send_flat.view(np.uint8)
        sp, rp = self._pieces(data.size), self._pieces(recv_flat.nbytes)
        for k in range(max(len(sp), len(rp))):
            if k < len(sp):
                self._send_piece(dst, data, sp[k][0], sp[k][1], data.size)
            if k < len(rp):
                self._recv_piece(src, recv_flat, rp[k][0], rp[k][1], recv_flat.nbytes, op)
