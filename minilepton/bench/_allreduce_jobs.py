"""What the all-reduce benchmark runs on the ranks: timed loops of one all-reduce per call.

Each job warms up, agrees with its peers on a number of calls per (path, size) (about
``target_ms`` of work, the largest wish of any rank), then times ``repeats`` rounds that cycle
over sizes and paths: {(path, bytes): [seconds per call, ...]}.
"""

from __future__ import annotations

import time

import numpy as np

WARM_CALLS = 10  # calls on the largest size before anything is timed


def _time(allreduce, x, calls: int, barrier) -> float:
    barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        allreduce(x)
    barrier()
    return (time.perf_counter() - t0) / calls


def _arrays(comm, sizes, paths):
    """One buffer per path, of the largest size; each size times a prefix of it."""
    n = max(sizes) // 4
    return {p: (comm.zeros((n,), np.float32) if p == "arena" else np.zeros(n, np.float32))
            for p in paths}


def minilepton_job(comm, sizes, paths, algorithm, repeats, target_ms):
    """{(path, bytes): [seconds per call, ...]} for ``comm.allreduce(x, algorithm=...)``."""
    buffers = _arrays(comm, sizes, paths)

    def allreduce(x):
        return comm.allreduce(x, algorithm=algorithm)

    return _cycle(comm, allreduce, buffers, sizes, repeats, target_ms, comm.barrier)


def raw_mpi_job(comm, sizes, repeats, target_ms):
    """The baseline: mpi4py's blocking ``Allreduce`` on a NumPy array, nothing of ours."""
    from mpi4py import MPI  # optional; these ranks run under mpiexec, MPI is started

    world = comm.comm
    buffers = {"private": np.zeros(max(sizes) // 4, np.float32)}

    def allreduce(x):
        return world.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)

    times = _cycle(comm, allreduce, buffers, sizes, repeats, target_ms, world.Barrier)
    return times, MPI.Get_library_version().splitlines()[0].strip()


def copy_job(comm, sizes, repeats, target_ms):
    """The machine's copy bandwidths in the same run, every rank at once: ``copy``, a memcpy
    (``np.copyto``) of a private array into another, timed like an all-reduce; and ``pull``,
    a memcpy out of the array the next rank has just written (its lines still sit in that
    rank's cache, or in memory when they do not fit): the bytes an all-reduce must bring in.
    A pull is timed call by call, between barriers (the peer's write is not timed)."""
    n = max(sizes) // 4
    src, dst = np.ones(n, np.float32), np.zeros(n, np.float32)

    def copy(x):
        np.copyto(dst[:x.size], x)

    times = _cycle(comm, copy, {"copy": src}, sizes, repeats, target_ms, comm.barrier)
    mine = comm.zeros((n,), np.float32)
    theirs = comm.peers_of(mine)[(comm.rank + 1) % comm.world_size]
    for rnd in range(repeats + 1):  # the first round warms up (page faults)
        for nbytes in sizes:
            m = nbytes // 4
            calls = min(_agreed_calls(comm, target_ms * 1e-3 / (nbytes / 5e9 + 1e-6)), 1000)
            spent = 0.0
            for k in range(calls):
                mine[:m] = k  # the peer pulls lines this rank has just written
                comm.barrier()
                t0 = time.perf_counter()
                np.copyto(dst[:m], theirs[:m])
                spent += time.perf_counter() - t0
                comm.barrier()
            if rnd:
                times.setdefault(("pull", nbytes), []).append(spent / calls)
    return times


def _cycle(comm, allreduce, buffers, sizes, repeats, target_ms, barrier):
    """Warm up, agree on a number of calls per (path, size), then time the repeats, cycling
    over sizes and paths."""
    for x in buffers.values():  # page faults, scratch buffers, huge pages settling: the
        for _ in range(WARM_CALLS):  # first calls on a fresh buffer are several times slower
            allreduce(x[:max(sizes) // 4])
    calls = {}
    for nbytes in sizes:
        for path, buf in buffers.items():
            t = _time(allreduce, buf[:nbytes // 4], 2, barrier)
            calls[(path, nbytes)] = _agreed_calls(comm, target_ms * 1e-3 / max(t, 1e-7))
    times: dict = {}
    for _ in range(repeats):
        for nbytes in sizes:
            for path, buf in buffers.items():
                t = _time(allreduce, buf[:nbytes // 4], calls[(path, nbytes)], barrier)
                times.setdefault((path, nbytes), []).append(t)
    return times


def _agreed_calls(comm, wanted: float) -> int:
    """The largest wish over the ranks, between 3 and 3000 (every rank must make the same
    number of calls)."""
    x = np.array([min(max(wanted, 3.0), 3000.0)])
    comm.allreduce(x, op="max")
    return int(x[0])
