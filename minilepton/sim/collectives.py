"""What a collective costs: the α-β model of each algorithm, and groups that span nodes.

A message of N bytes over a link takes α + N·β (latency α, β = 1 / bandwidth; Hockney).
For P ranks and an array of N bytes (Thakur, Rabenseifner and Gropp, 2005):

=================================  ==================  ==========================
algorithm                          latency terms       bandwidth terms
=================================  ==================  ==========================
ring all-reduce                    2(P−1) α            2 (P−1)/P · N β
reduce-scatter + all-gather        2 ⌈log2 P⌉ α        2 (P−1)/P · N β   (Rabenseifner)
tree all-reduce (binomial)         2 ⌈log2 P⌉ α        2 ⌈log2 P⌉ · N β
reduce-scatter, all-gather (ring)  (P−1) α             (P−1)/P · N β
broadcast (flat, from the root)    (P−1) α             (P−1) · N β
point to point                     α                   N β
=================================  ==================  ==========================

``allreduce`` takes the cheapest of the three all-reduce algorithms, as NCCL and MPI libraries
pick by size: latency-bound small arrays go by tree or halving, large ones by ring.

**Groups across nodes.** Ranks are numbered node by node (``devices_per_node`` consecutive
ranks share a node); a group of P ranks spaced ``stride`` apart has k = min(P, G/stride)
members on each node (G devices per node) and spans n = P/k nodes. Its all-reduce is
hierarchical: a reduce-scatter inside each node (fast link), an all-reduce of the N/k-byte
shards between nodes (each local member on its own adapter, all at once), an all-gather inside
the node:

    T = T_rs(N, k; intra) + T_ar(N/k, n; inter) + T_ag(N, k; intra)

Reduce-scatter and all-gather cross nodes the same way. Every device communicates at the same
time (all groups of a kind run together), so an adapter shared by a node's G devices gives
each 1/G of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A link of ``latency_us`` and ``bandwidth_gbps`` (Gbit/s, one direction, per device) of
    which a fraction ``efficiency`` is reachable; ``per_node``: one adapter shared by a node."""

    name: str
    latency_us: float
    bandwidth_gbps: float
    efficiency: float = 1.0
    per_node: bool = False

    def __post_init__(self):
        if self.latency_us < 0 or self.bandwidth_gbps <= 0 or not 0 < self.efficiency <= 1:
            raise ValueError(f"link {self.name!r}: needs latency >= 0, bandwidth > 0 and "
                             f"0 < efficiency <= 1")

    @property
    def alpha_s(self) -> float:
        return self.latency_us * 1e-6

    def beta_s_per_byte(self, sharing: int = 1) -> float:
        """Seconds per byte, the adapter shared by ``sharing`` devices when ``per_node``."""
        share = sharing if self.per_node else 1
        return 8.0 * share / (self.bandwidth_gbps * 1e9 * self.efficiency)


def _log2(p: int) -> int:
    return math.ceil(math.log2(p)) if p > 1 else 0


class AlphaBeta:
    """The collectives of one link (α, β) between P ranks, by the formulas of the table."""

    def __init__(self, link: Link, sharing: int = 1):
        self.link, self.alpha, self.beta = link, link.alpha_s, link.beta_s_per_byte(sharing)

    def ring_allreduce(self, nbytes: float, P: int) -> float:
        return 0.0 if P < 2 else 2 * (P - 1) * self.alpha + 2 * (P - 1) / P * nbytes * self.beta

    def halving_allreduce(self, nbytes: float, P: int) -> float:
        return 0.0 if P < 2 else 2 * _log2(P) * self.alpha + 2 * (P - 1) / P * nbytes * self.beta

    def tree_allreduce(self, nbytes: float, P: int) -> float:
        return 0.0 if P < 2 else 2 * _log2(P) * (self.alpha + nbytes * self.beta)

    def allreduce(self, nbytes: float, P: int) -> float:
        return min(self.ring_allreduce(nbytes, P), self.halving_allreduce(nbytes, P),
                   self.tree_allreduce(nbytes, P))

    def reduce_scatter(self, nbytes: float, P: int) -> float:
        return 0.0 if P < 2 else (P - 1) * self.alpha + (P - 1) / P * nbytes * self.beta

    allgather = reduce_scatter  # the mirror image: the same messages, reversed

    def broadcast(self, nbytes: float, P: int) -> float:
        return 0.0 if P < 2 else (P - 1) * (self.alpha + nbytes * self.beta)

    def p2p(self, nbytes: float) -> float:
        return self.alpha + nbytes * self.beta


def members_per_node(size: int, stride: int, devices_per_node: int | None) -> int:
    """k: how many of a group's ``size`` ranks, ``stride`` apart, share a node."""
    if devices_per_node is None or size <= 1:
        return max(size, 1)
    return max(1, min(size, devices_per_node // max(stride, 1)))


class Network:
    """Collectives over groups of a cluster: ``intra`` and ``inter`` fabrics (objects with
    ``allreduce``, ``reduce_scatter``, ``allgather``, ``broadcast`` and ``p2p``), nodes of
    ``devices_per_node`` devices (None: one node holds every device)."""

    def __init__(self, intra, inter, devices_per_node: int | None):
        self.intra, self.inter, self.devices_per_node = intra, inter, devices_per_node

    def split(self, size: int, stride: int) -> tuple[int, int]:
        k = members_per_node(size, stride, self.devices_per_node)
        return k, max(1, size // k)

    def allreduce(self, nbytes: float, size: int, stride: int = 1) -> float:
        k, n = self.split(size, stride)
        if n == 1:
            return self.intra.allreduce(nbytes, k)
        return (self.intra.reduce_scatter(nbytes, k) + self.inter.allreduce(nbytes / k, n)
                + self.intra.allgather(nbytes, k))

    def reduce_scatter(self, nbytes: float, size: int, stride: int = 1) -> float:
        k, n = self.split(size, stride)
        if n == 1:
            return self.intra.reduce_scatter(nbytes, k)
        return self.intra.reduce_scatter(nbytes, k) + self.inter.reduce_scatter(nbytes / k, n)

    def allgather(self, nbytes: float, size: int, stride: int = 1) -> float:
        k, n = self.split(size, stride)
        if n == 1:
            return self.intra.allgather(nbytes, k)
        return self.inter.allgather(nbytes / k, n) + self.intra.allgather(nbytes, k)

    def broadcast(self, nbytes: float, size: int, stride: int = 1) -> float:
        k, n = self.split(size, stride)
        if n == 1:
            return self.intra.broadcast(nbytes, k)
        return self.inter.broadcast(nbytes, n) + self.intra.broadcast(nbytes, k)

    def p2p(self, nbytes: float, crosses_nodes: bool) -> float:
        return (self.inter if crosses_nodes else self.intra).p2p(nbytes)

    def spans_nodes(self, size: int, stride: int) -> bool:
        return self.split(size, stride)[1] > 1
