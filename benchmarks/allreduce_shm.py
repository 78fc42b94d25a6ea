"""All-reduce (float32, in-place sum): the shared-memory backend against raw mpi4py + MPICH.

    python benchmarks/allreduce_shm.py                       # P=2 and P=4, the full size range
    python benchmarks/allreduce_shm.py --workers 2 --sizes 1KiB,1MiB,16MiB --rounds 5

Rounds interleave the contenders (shm arena arrays, shm private arrays, shm ring, MPI) so that
a slow window of a shared machine hits them all alike; each round times many calls per size one
by one and keeps their median, and the table reports the median over rounds of that time, the bus bandwidth
busbw = 2(P−1)/P · bytes / time (the nccl-tests convention) and the ratio to MPICH.
MPI runs as ``mpiexec -n P python this_file --mpi-worker ...`` when mpi4py and mpiexec exist.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

SIZES = "1KiB,16KiB,64KiB,256KiB,1MiB,4MiB,16MiB,64MiB"


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "b": 1}
    t = text.strip().lower()
    for unit, scale in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * scale)
    return int(t)


def calls_for(nbytes: int) -> int:
    """Calls per size and round: ~20 ms of work at a few GB/s, at least 30 (a median of many)."""
    return int(max(30, min(3000, 4e7 / max(nbytes, 1))))


def time_calls(fn, x, calls: int, barrier) -> float:
    """Median seconds per call (each call timed on its own: on a shared machine a preempted
    call is an outlier, not a trend)."""
    fn(x)  # warm up (page faults, caches)
    fn(x)
    barrier()
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - t0
    barrier()
    return float(np.median(times))


def shm_job(comm, sizes, modes):
    """Time every (mode, size) in this worker; rank 0's times are returned."""
    out = {}
    for nbytes in sizes:
        n = nbytes // 4
        for mode in modes:
            if mode == "arena":
                x = comm.zeros((n,), np.float32)
                x[:] = 0.0
                fn = comm.allreduce
            else:
                x = np.zeros(n, np.float32)
                algo = "ring" if mode == "ring" else None
                fn = (lambda a, algo=algo: comm.allreduce(a, algorithm=algo))
            out[(mode, nbytes)] = time_calls(fn, x, calls_for(nbytes), comm.barrier)
    return out


def mpi_worker(sizes):
    from mpi4py import MPI  # noqa: PLC0415

    world = MPI.COMM_WORLD
    out = {}
    for nbytes in sizes:
        x = np.zeros(nbytes // 4, np.float32)
        fn = (lambda a: world.Allreduce(MPI.IN_PLACE, a, op=MPI.SUM))
        out[str(nbytes)] = time_calls(fn, x, calls_for(nbytes), world.Barrier)
    if world.Get_rank() == 0:
        print("MPIRESULT " + json.dumps(out), flush=True)


def run_mpi(P: int, sizes) -> dict | None:
    if shutil.which("mpiexec") is None:
        return None
    cmd = ["mpiexec", "-n", str(P), sys.executable, os.path.abspath(__file__), "--mpi-worker",
           "--sizes", ",".join(map(str, sizes))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("MPIRESULT "):
            return {int(k): v for k, v in json.loads(line[10:]).items()}
    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--sizes", default=SIZES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--modes", default="arena,private,ring")
    ap.add_argument("--no-mpi", action="store_true")
    ap.add_argument("--config", default="", help="ShmConfig fields, e.g. spin_s=3e-6,stage_bytes=1048576")
    ap.add_argument("--json", default=None, help="write the medians here")
    ap.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.mpi_worker:
        return mpi_worker(sizes)
    from minilepton.cluster import launch  # noqa: PLC0415

    from minilepton.comm.shm import ShmConfig  # noqa: PLC0415

    fields = dict(kv.split("=") for kv in args.config.split(",") if kv)
    types = {f: type(getattr(ShmConfig(), f) or 0.0) for f in fields}
    config = {f: types[f](float(v)) for f, v in fields.items()}
    modes = args.modes.split(",")
    table = []
    for P in [int(p) for p in args.workers.split(",")]:
        runs = {}
        for _ in range(args.rounds):
            job = launch(shm_job, P, args=(sizes, modes), config=ShmConfig(**config))
            for key, t in job[0].items():
                runs.setdefault(key, []).append(t)
            mpi = None if args.no_mpi else run_mpi(P, sizes)
            for nbytes, t in (mpi or {}).items():
                runs.setdefault(("mpi", nbytes), []).append(t)
        med = {k: float(np.median(v)) for k, v in runs.items()}
        for nbytes in sizes:
            base = med.get(("mpi", nbytes))
            for mode in ["mpi", *modes]:
                t = med.get((mode, nbytes))
                if t is None:
                    continue
                busbw = 2 * (P - 1) / P * nbytes / t / 1e9
                ratio = base / t if base else float("nan")
                table.append({"P": P, "mode": mode, "bytes": nbytes, "us": t * 1e6,
                              "busbw_GBps": busbw, "speed_vs_mpi": ratio})
                print(f"P={P} {mode:8s} {nbytes:>10d} B {t * 1e6:10.1f} us "
                      f"busbw {busbw:7.2f} GB/s  x{ratio:5.2f} vs MPICH", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=1)


if __name__ == "__main__":
    main()
