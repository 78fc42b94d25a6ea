"""A soak of training jobs with injected faults and restarts: nothing may leak, every job ends.

    python benchmarks/fault_soak.py [--jobs 50] [--seed 0] [--backends shm,mpi] [--json PATH]

Each job draws a layout (1-3 data-parallel workers, tp 2, pp 2, dp 2 × tp 2), a backend (shm,
or MPI when mpi4py and mpiexec are there), one or two faults (raise, kill, stall, slow) at random
steps, and ``--checkpoint-every``; it runs with ``--max-restarts 2`` on a small MLP and random
data. After every job the script checks that no child process is left, and that no file or
folder of the project is left in ``/dev/shm`` or the temporary folder. It prints, over all
jobs: how many ended, restarts, the time from a fault firing to the restarted job's first step
(``recovery_seconds``) and the steps computed again (``lost_steps``), and leaks (must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import numpy as np

import minilepton as ml
from minilepton.cluster.procfs import parent

LAYOUTS = [{"workers": 1}, {"workers": 2}, {"workers": 3}, {"tp": 2},
           {"pp": 2, "micro_batches": 2}, {"dp": 2, "tp": 2}]
KINDS = ("raise", "kill", "stall", "slow")
STEPS = 24  # 2 epochs of 12 steps


def leftovers(mpi: bool) -> set:
    """Our child processes, our arenas in /dev/shm (named after this launcher's pid), the
    project's folders in the temporary folder, and (with MPI) MPICH's segments. Other users
    of the machine running MPI jobs at the same time show up too: soak a quiet machine."""
    names = {f"shm:{n}" for n in os.listdir("/dev/shm")
             if n.startswith(f"minilepton-{os.getpid()}-") or (mpi and n.startswith("mpich"))}
    tmp = tempfile.gettempdir()
    names |= {f"tmp:{n}" for n in os.listdir(tmp) if n.startswith("minilepton-run-")
              or (mpi and n.startswith("minilepton-mpi-"))}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if parent(int(pid)) == os.getpid():
            names.add(f"child:{pid}")
    return names


def mpi_usable() -> bool:
    try:
        import mpi4py  # noqa: F401

        from minilepton.cluster.mpi_launch import find_mpiexec
        return find_mpiexec() is not None
    except ImportError:
        return False


def one_job(rng: random.Random, arrays, backends) -> dict:
    layout = rng.choice(LAYOUTS)
    world = ml.TrainConfig(**layout).world_size
    faults = [f"{rng.choice(KINDS)}:rank={rng.randrange(world)}:step={rng.randint(2, STEPS)}"
              for _ in range(rng.randint(1, 2))]
    faults = [f + ":seconds=0.05" if f.startswith("slow") else f for f in faults]
    cfg = ml.TrainConfig(hidden=(16, 8), epochs=2, batch_size=16, verbose=False,
                         backend=rng.choice(backends), max_restarts=2,
                         checkpoint_every=rng.choice([3, 5, 8]), fault=faults, **layout)
    t0 = time.perf_counter()
    try:
        metrics = ml.train(cfg, arrays=arrays)
        outcome = "done"
    except ml.cluster.WorkerError as exc:  # more failures than restarts (or a stall in MPI)
        metrics, outcome = {}, f"failed: {str(exc).splitlines()[0][:80]}"
    return {"layout": layout, "backend": cfg.backend, "faults": faults, "outcome": outcome,
            "seconds": time.perf_counter() - t0, "restarts": metrics.get("restarts"),
            "recovery_seconds": metrics.get("recovery_seconds"),
            "lost_steps": metrics.get("lost_steps")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", default="shm,mpi",
                        help="backends to draw from (mpi only where mpi4py and mpiexec are)")
    parser.add_argument("--json", metavar="PATH", help="also write every job's record here")
    args = parser.parse_args(argv)
    os.environ.setdefault("MINILEPTON_COMM_TIMEOUT_S", "2")  # a stall is noticed in 2 s
    rng = random.Random(args.seed)
    data = np.random.default_rng(args.seed)
    arrays = (data.random((192, 12)), data.integers(0, 10, 192), data.random((48, 12)),
              data.integers(0, 10, 48))
    backends = [b for b in args.backends.split(",") if b == "shm" or mpi_usable()]
    mpi = "mpi" in backends
    before, jobs, leaks = leftovers(mpi), [], []
    for k in range(args.jobs):
        job = one_job(rng, arrays, backends)
        time.sleep(0.05)  # let the kernel reap what the launcher just stopped
        job["leaked"] = sorted(leftovers(mpi) - before)
        leaks += job["leaked"]
        jobs.append(job)
        print(f"job {k + 1:3d}/{args.jobs} {job['backend']} {job['layout']} {job['faults']}: "
              f"{job['outcome']}, {job['restarts']} restart(s), {job['seconds']:.1f} s"
              + (f", LEAKED {job['leaked']}" if job["leaked"] else ""), flush=True)
    recovered = [j for j in jobs if j["recovery_seconds"] is not None]
    print(f"\n{len(jobs)} jobs ({', '.join(backends)}), {sum(j['outcome'] == 'done' for j in jobs)}"
          f" ended normally, {sum(j['restarts'] or 0 for j in jobs)} restarts, leaks: {len(leaks)}")
    if recovered:
        rec = [j["recovery_seconds"] for j in recovered]
        lost = [j["lost_steps"] for j in recovered]
        print(f"fault -> restarted job's first step: median {statistics.median(rec):.2f} s, "
              f"max {max(rec):.2f} s (stalls include the 2 s stall timeout); "
              f"steps computed again: median {statistics.median(lost)}, max {max(lost)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arguments": vars(args), "jobs": jobs}, f, indent=1)
    return 1 if leaks else 0


if __name__ == "__main__":
    sys.exit(main())
