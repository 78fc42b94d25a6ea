"""All-reduce (float32, in-place sum): the shared-memory backend against raw mpi4py + MPICH.

    python benchmarks/allreduce_shm.py                       # P=2 and P=4, 1 KiB .. 64 MiB
    python benchmarks/allreduce_shm.py --workers 2 --sizes 1KiB,1MiB,16MiB --rounds 9

Both contenders run in the *same* processes: ``mpiexec -n P`` starts the ranks, rank 0 makes a
shared-memory arena, and every rank builds a ``ShmCommunicator`` on it next to MPI's
COMM_WORLD. For each size, rounds alternate the contenders (MPI ``Allreduce`` with
``MPI.IN_PLACE``; shm on an arena array from ``comm.zeros``; shm on a private array; the shm
ring), each timing many calls one by one and keeping their median, so a slow window of a shared
machine hits them all alike. The table shows the median over rounds of the time per call, the
bus bandwidth busbw = 2(P−1)/P · bytes / time (the nccl-tests convention) and the speed ratio to
MPICH. Without mpi4py/mpiexec it times the shm contenders alone, through ``launch``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

SIZES = "1KiB,16KiB,64KiB,256KiB,1MiB,4MiB,16MiB,64MiB"
MODES = ("mpi", "arena", "private", "ring")


def parse_size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "b": 1}
    t = text.strip().lower()
    for unit, scale in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * scale)
    return int(t)


def calls_for(nbytes: int) -> int:
    """Calls per size and round: ~20 ms of work at a few GB/s, at least 15."""
    return int(max(15, min(2000, 2e7 / max(nbytes, 1))))


def time_calls(fn, calls: int, barrier) -> float:
    """Median seconds per call (each call timed on its own: on a shared machine a preempted
    call is an outlier, not a trend)."""
    fn()  # warm up (page faults, caches)
    fn()
    barrier()
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    barrier()
    return float(np.median(times))


def contenders(comm, mpi_comm, nbytes, modes):
    """name -> zero-argument callable doing one in-place all-reduce of ``nbytes``."""
    n = nbytes // 4
    out = {}
    if "mpi" in modes and mpi_comm is not None:
        from mpi4py import MPI

        buf = np.zeros(n, np.float32)
        out["mpi"] = lambda: mpi_comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if "arena" in modes:
        arena = comm.zeros((n,), np.float32)
        out["arena"] = lambda: comm.allreduce(arena)
    if "private" in modes:
        private = np.zeros(n, np.float32)
        out["private"] = lambda: comm.allreduce(private)
    if "ring" in modes:
        ring = np.zeros(n, np.float32)
        out["ring"] = lambda: comm.allreduce(ring, algorithm="ring")
    return out


def measure(comm, mpi_comm, sizes, modes, rounds):
    """{(mode, nbytes): [median seconds per round]} on this rank."""
    runs = {}
    for nbytes in sizes:
        fns = contenders(comm, mpi_comm, nbytes, modes)
        for _ in range(rounds):
            for mode, fn in fns.items():
                t = time_calls(fn, calls_for(nbytes), comm.barrier)
                runs.setdefault((mode, nbytes), []).append(t)
    return runs


def shm_job(comm, sizes, modes, rounds):
    return measure(comm, None, sizes, modes, rounds)


def shm_config(text: str):
    """``"stage_bytes=262144,spin_s=3e-6"`` -> ShmConfig with those fields."""
    from minilepton.comm.shm import ShmConfig

    fields = dict(kv.split("=") for kv in text.split(",") if kv)
    return ShmConfig(**{k: (float(v) if "." in v or "e" in v else int(v))
                        for k, v in fields.items()})


def mpi_worker(sizes, modes, rounds, pin: bool, config_text: str = "") -> None:
    """One MPI rank: MPI's COMM_WORLD and a ShmCommunicator over an arena made by rank 0."""
    from mpi4py import MPI

    from minilepton.cluster import blas
    from minilepton.comm.shm import Arena, world_communicator

    world = MPI.COMM_WORLD
    rank, P = world.Get_rank(), world.Get_size()
    cores = blas.core_sets(P, pin)
    if cores:
        os.sched_setaffinity(0, cores[rank])
    config = shm_config(config_text).resolve(P)
    made = Arena.create() if rank == 0 else None
    try:
        name, offset = world.bcast(
            (made.name, made.alloc(config.block_bytes(P), "control", reserve=False))
            if rank == 0 else None)
        comm = world_communicator(Arena.attach(name), rank, P, offset, config)
        world.Barrier()
        if rank == 0:
            made.unlink()  # the mappings stay; nothing is left behind if a rank dies
        runs = measure(comm, world, sizes, modes, rounds)
    finally:
        if made is not None:
            made.unlink()
    if rank == 0:
        print("RESULT " + json.dumps([[m, b, t] for (m, b), t in runs.items()]), flush=True)


def run_mpi(P, sizes, modes, rounds, pin, config_text="") -> dict | None:
    if importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None:
        return None
    cmd = ["mpiexec", "-n", str(P), sys.executable, os.path.abspath(__file__), "--mpi-worker",
           "--sizes", ",".join(map(str, sizes)), "--modes", ",".join(modes),
           "--rounds", str(rounds), "--pin", pin, "--config", config_text]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {(m, b): t for m, b, t in json.loads(line[7:])}
    print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="2,4")
    ap.add_argument("--sizes", default=SIZES)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--pin", choices=["auto", "yes", "no"], default="auto",
                    help="pin each rank to its own cores (auto: when there are enough)")
    ap.add_argument("--json", default=None, help="write the table here")
    ap.add_argument("--config", default="", help="ShmConfig fields: stage_bytes=262144,...")
    ap.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    pin = {"auto": None, "yes": True, "no": False}[args.pin]
    if args.mpi_worker:
        return mpi_worker(sizes, modes, args.rounds, pin, args.config)
    table = []
    for P in [int(p) for p in args.workers.split(",")]:
        runs = run_mpi(P, sizes, modes, args.rounds, args.pin, args.config)
        if runs is None:  # no MPI: the shm contenders alone, under the launcher
            from minilepton.cluster import launch

            shm_modes = [m for m in modes if m != "mpi"]
            runs = launch(shm_job, P, args=(sizes, shm_modes, args.rounds), pin_cores=pin,
                          config=shm_config(args.config))[0]
        for nbytes in sizes:
            base = np.median(runs[("mpi", nbytes)]) if ("mpi", nbytes) in runs else None
            for mode in modes:
                if (mode, nbytes) not in runs:
                    continue
                t = float(np.median(runs[(mode, nbytes)]))
                busbw = 2 * (P - 1) / P * nbytes / t / 1e9
                ratio = base / t if base else float("nan")
                table.append({"P": P, "mode": mode, "bytes": nbytes, "us": t * 1e6,
                              "busbw_GBps": busbw, "speed_vs_mpi": ratio})
                print(f"P={P} {mode:8s} {nbytes:>10d} B {t * 1e6:10.1f} us "
                      f"busbw {busbw:7.2f} GB/s  x{ratio:5.2f} vs MPICH", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "load_average": os.getloadavg(),
                       "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
