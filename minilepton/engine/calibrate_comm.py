"""The collectives' part of ``minilepton calibrate``: lines t = a + b·N per operation and P.

For each backend (shared memory; MPI when mpi4py and mpiexec are there) and P in (2, 4), one
job of P worker processes times, on every rank, a median over repeats of:

- all-reduce on arena arrays (``comm.zeros``: the gradient buckets of data parallelism) and on
  private arrays (the activations of tensor parallelism): the all-reduce benchmark's own job,
  ``bench.allreduce.minilepton_job``;
- all-gather (N = the gathered bytes), reduce-scatter and broadcast on private arrays;
- point to point: rank 2i sends N bytes to 2i+1, which sends them back (half the round trip).

A line is fitted to each (operation, path, P) by least squares on the *relative* error,
min Σ ((a + b·N − t)/t)², so a 64-byte call weighs as much as a 4 MiB one.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np

from ..bench.allreduce import minilepton_job
from ..cluster import launch
from ..cluster.mpi_launch import find_mpiexec

SIZES = [64, 4096, 65536, 1 << 20, 1 << 22]
WORLDS = (2, 4)
TARGET_MS = 4.0
REPEATS = 3


def _agreed(comm, wanted: float) -> int:
    x = np.array([min(max(wanted, 3.0), 2000.0)])
    comm.allreduce(x, op="max")
    return int(x[0])


def _timed(comm, fn, calls: int) -> float:
    comm.barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    comm.barrier()
    return (time.perf_counter() - t0) / calls


def _ops(comm, nbytes: int):
    """The operations other than all-reduce, each as a no-argument call on ``nbytes``."""
    P, r = comm.world_size, comm.rank
    part = np.ones(max(nbytes // 4 // P, 1), np.float32)
    whole = np.ones(max(nbytes // 4 // P, 1) * P, np.float32)
    peer = r + 1 if r % 2 == 0 else r - 1

    def p2p():
        if peer >= P:
            return
        if r % 2 == 0:
            comm.send(whole, peer)
            comm.recv(whole, peer)
        else:
            comm.recv(whole, peer)
            comm.send(whole, peer)

    return {"allgather": lambda: comm.allgather(part),
            "reduce_scatter": lambda: comm.reduce_scatter(whole),
            "broadcast": lambda: comm.broadcast(whole, 0),
            "p2p": p2p}


def collectives_job(comm, sizes, repeats, target_ms):
    """Rank 0 returns {(op, path, bytes): [seconds per call, ...]}."""
    out = {("allreduce", path, n): ts for (path, n), ts in
           minilepton_job(comm, sizes, ["arena", "private"], None, repeats, target_ms).items()}
    for nbytes in sizes:
        for op, fn in _ops(comm, nbytes).items():
            fn()
            once = _timed(comm, fn, 2)
            calls = _agreed(comm, target_ms * 1e-3 / max(once, 1e-7))
            times = [_timed(comm, fn, calls) for _ in range(repeats)]
            if op == "p2p":
                times = [t / 2 for t in times]  # a round trip is two messages
            out[(op, "private", nbytes)] = times
    return out if comm.rank == 0 else None


def fit_line(points) -> dict:
    """a, b of t ≈ a + b·N minimising the relative error; both kept non-negative."""
    n = np.array([p[0] for p in points], float)
    t = np.array([p[1] for p in points], float)
    rows = np.stack([1.0 / t, n / t], axis=1)
    (a, b), *_ = np.linalg.lstsq(rows, np.ones_like(t), rcond=None)
    if b < 0:
        a, b = float(np.median(t)), 0.0
    elif a < 0:
        a, b = 0.0, float(np.median(t / n))
    return {"a": float(a), "b": float(b), "points": [[float(x), float(y)] for x, y in points]}


def _mpi_ready() -> bool:
    return importlib.util.find_spec("mpi4py") is not None and bool(find_mpiexec())


def measure_collectives(log=print, worlds=WORLDS, sizes=SIZES, mpi: bool = True) -> dict:
    """{backend: {op: {path: {P: {"a", "b", "points"}}}}} for shm (and mpi when available)."""
    backends = ["shm"] + (["mpi"] if mpi and _mpi_ready() else [])
    result: dict = {}
    for backend in backends:
        for P in worlds:
            times = launch(collectives_job, P, args=(sizes, REPEATS, TARGET_MS),
                           backend=backend, blas_threads=1)[0]
            for (op, path, nbytes), ts in sorted(times.items()):
                points = result.setdefault(backend, {}).setdefault(op, {}).setdefault(
                    path, {}).setdefault(str(P), [])
                points.append((nbytes, float(np.median(ts))))
            log(f"  {backend} P={P}: done")
    for backend in result.values():
        for op in backend.values():
            for path in op.values():
                for P in list(path):
                    path[P] = fit_line(path[P])
    return result
