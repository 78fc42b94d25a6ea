"""The simulated part of the cluster: slower links and slower nodes on one laptop.

**Links.** ``LinkModel(latency_us, bandwidth_gbps)`` prices a message of b bytes at
``latency + 8·b / bandwidth`` (the alpha-beta, or Hockney, model). A communicator with a link
makes each operation last at least as long as the link would take for the messages that rank
sends, summed over the algorithm's steps:

==================  ==========================  ===============================================
operation           messages per rank           bytes per rank (N = array bytes, P = ranks)
==================  ==========================  ===============================================
all-reduce          2(P−1) (ring steps)         2(P−1)/P · N   (reduce-scatter + all-gather)
reduce-scatter      P−1                         (P−1)/P · N
all-gather          P−1                         (P−1) · n      (n = one rank's part)
broadcast           P−1 from the root           (P−1) · N      (flat tree; all ranks wait)
send                1                           N
barrier             none                        none
==================  ==========================  ===============================================

The shared-memory all-reduce uses the same model as the ring: it is the time the job would
take on that network. Profiles (one direction of one link, orders of magnitude as published):

===========  ===========  ==============  ==============================================
profile      latency      bandwidth       what it stands for
===========  ===========  ==============  ==============================================
nvlink       2 µs         2400 Gbit/s     NVLink 3 between two GPUs (300 GB/s each way)
infiniband   2 µs         200 Gbit/s      InfiniBand HDR, MPI-level latency
10gbe        20 µs        10 Gbit/s       10 Gigabit Ethernet through the kernel's TCP
1gbe         50 µs        1 Gbit/s        Gigabit Ethernet, an office network
===========  ===========  ==============  ==============================================

**Nodes.** ``node_speeds=[1, 1, 0.5, 1]`` makes rank 2 a node of half the speed: wrap its
compute in ``with simulate.compute():`` (or call ``slow_down(seconds_computed)``) and it
sleeps so that the work takes 1/s as long. Data parallelism's load balancing reads
``node_speeds()`` to give slower nodes fewer samples.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkModel:
    """A link of ``latency_us`` microseconds per message and ``bandwidth_gbps`` Gbit/s."""

    latency_us: float
    bandwidth_gbps: float

    def __post_init__(self):
        if self.latency_us < 0 or self.bandwidth_gbps <= 0:
            raise ValueError(f"a link needs latency_us >= 0 and bandwidth_gbps > 0, not "
                             f"{self.latency_us}, {self.bandwidth_gbps}")

    def seconds(self, messages: int, nbytes: int) -> float:
        """Time for ``messages`` messages carrying ``nbytes`` bytes in all, one after another."""
        return messages * self.latency_us * 1e-6 + nbytes * 8 / (self.bandwidth_gbps * 1e9)


PROFILES = {
    "nvlink": LinkModel(latency_us=2.0, bandwidth_gbps=2400.0),
    "infiniband": LinkModel(latency_us=2.0, bandwidth_gbps=200.0),
    "10gbe": LinkModel(latency_us=20.0, bandwidth_gbps=10.0),
    "1gbe": LinkModel(latency_us=50.0, bandwidth_gbps=1.0),
}


def link_model(spec) -> LinkModel | None:
    """``None``, a profile name, ``"LATENCY_US,BANDWIDTH_GBPS"``, a dict or a LinkModel."""
    if spec is None or isinstance(spec, LinkModel):
        return spec
    if isinstance(spec, dict):
        return LinkModel(float(spec["latency_us"]), float(spec["bandwidth_gbps"]))
    text = str(spec).strip().lower()
    if text in PROFILES:
        return PROFILES[text]
    parts = text.split(",")
    if len(parts) == 2:
        try:
            return LinkModel(float(parts[0]), float(parts[1]))
        except ValueError:
            pass
    raise ValueError(f"unknown link {spec!r}; use one of {', '.join(PROFILES)} or "
                     "'LATENCY_US,BANDWIDTH_GBPS'")


def check_node_speeds(speeds, world_size: int | None = None) -> list | None:
    """The one parser of node speeds: ``"1,1,0.5"`` or a sequence -> positive finite floats
    (one per rank when ``world_size`` is given); None and ``""`` stay None."""
    if speeds is None or speeds == "":
        return None
    items = speeds.split(",") if isinstance(speeds, str) else list(speeds)
    try:
        values = [float(s) for s in items]
    except (TypeError, ValueError):
        raise ValueError(f"node speeds must be comma-separated numbers, not {speeds!r}") from None
    if not values or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"node speeds must be > 0, got {speeds!r}")
    if world_size is not None and len(values) != world_size:
        raise ValueError(f"node_speeds has {len(values)} factors for {world_size} workers")
    return values


def relative_speeds(speeds) -> list:
    """Speeds as fractions of the fastest node: ``[2, 2, 1]`` and ``[1, 1, 0.5]`` are one cluster."""
    fastest = max(speeds)
    return [s / fastest for s in speeds]


_speeds: list | None = None  # the job's node speeds (set in each worker)
_rank = 0


def set_node_speeds(speeds, rank: int) -> None:
    """Called by the worker at start-up: the job's speed factors and this worker's rank."""
    global _speeds, _rank
    _speeds, _rank = (list(speeds) if speeds is not None else None), int(rank)


def node_speeds() -> list | None:
    """Every rank's speed factor (None when the simulation is off)."""
    return None if _speeds is None else list(_speeds)


def node_speed() -> float:
    """This worker's speed factor relative to the fastest node (1.0 when the simulation is
    off): ``[2, 2, 1, 2]`` and ``[1, 1, 0.5, 1]`` describe the same cluster."""
    return 1.0 if _speeds is None else relative_speeds(_speeds)[_rank]


def slow_down(seconds_computed: float) -> float:
    """Sleep so that work that took ``seconds_computed`` takes 1/s as long; return the sleep."""
    s = node_speed()
    extra_s = seconds_computed * (1.0 / s - 1.0) if s < 1.0 else 0.0
    if extra_s > 0:
        time.sleep(extra_s)
    return extra_s


@contextmanager
def compute():
    """``with compute(): ...``: the block runs at this node's simulated speed."""
    t0 = time.perf_counter()
    yield
    slow_down(time.perf_counter() - t0)


def wrap(comm, link=None, node_speeds=None):
    """Give ``comm`` (any backend) the simulated link and this job's node speeds."""
    comm.link = link_model(link)
    set_node_speeds(check_node_speeds(node_speeds, comm.world_size), comm.rank)
    return comm
