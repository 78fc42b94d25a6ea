"""All-reduce (float32, in-place sum) on shm and MPI, against raw mpi4py + MPICH in the same run.

    minilepton bench allreduce --workers 2,4 --sizes 1KiB,64KiB,1MiB,16MiB,64MiB \\
        --backend shm,mpi --json benchmarks/allreduce.json --figure figures/allreduce.png

Contenders: every (backend, algorithm) asked for, each on arena arrays (``comm.zeros``: on shm
they live in shared memory, on MPI they are ordinary arrays) and on private NumPy arrays, plus
the baseline: plain ``comm.Allreduce(MPI.IN_PLACE, x)`` of mpi4py on a NumPy array under
mpiexec (the MPI library is named in the JSON), and two memcpys of each size on every rank at
once: between private arrays (``copy``), and out of the array a peer has just written
(``pull``: the limit an all-reduce could reach, see ``_allreduce_report``). Each round launches
every contender once, in a rotating order, and inside a job the repeats cycle over sizes and
paths, so that a slow window of a shared machine hits them all alike. Reported: the median
time per call over all repeats, algbw = bytes / time, busbw = 2(P−1)/P · bytes / time (the
nccl-tests convention: what each rank's link must carry) and the speed relative to the MPI
baseline (>1: faster).
"""

from __future__ import annotations

import importlib.util
import sys

from ..cluster import launch
from ..cluster.blas import share
from ..cluster.mpi_launch import find_mpiexec
from ..comm.shm.arena import parse_bytes
from ._allreduce_jobs import copy_job, minilepton_job, raw_mpi_job
from ._allreduce_report import format_table, machine, plot, rows
from ._common import save_json

ALGORITHMS = {"shm": ("rsag", "ring"), "mpi": ("ordered", "native", "ring")}
PATHS = ("arena", "private")


def add_arguments(parser) -> None:
    parser.add_argument("--workers", default="2,4", help="world sizes, comma-separated")
    parser.add_argument("--sizes", default="1KiB,64KiB,1MiB,16MiB,64MiB",
                        help="message sizes in bytes (KiB, MiB suffixes), comma-separated")
    parser.add_argument("--backend", default="shm,mpi", help="shm, mpi or both")
    parser.add_argument("--algorithm", default="all",
                        help="all, or a comma list of: shm rsag/ring, mpi ordered/native/ring")
    parser.add_argument("--paths", default="arena,private", help="arena, private or both")
    parser.add_argument("--rounds", type=int, default=3, help="launches per contender")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats inside a launch")
    parser.add_argument("--target-ms", type=float, default=20.0,
                        help="aim for this much work per timed repeat")
    parser.add_argument("--no-baseline", action="store_true", help="skip raw mpi4py + MPICH")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results here")
    parser.add_argument("--figure", default=None, metavar="PATH", help="busbw plot (PNG)")


def parse_sizes(text: str) -> list[int]:
    sizes = [parse_bytes(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 4:
        raise ValueError(f"--sizes needs sizes of at least 4 bytes, got {text!r}")
    return sizes


# ---- the launcher side
def _contenders(args) -> list[tuple[str, str]]:
    backends = [b.strip() for b in args.backend.split(",") if b.strip()]
    wanted = [a.strip() for a in args.algorithm.split(",") if a.strip()]
    for b in backends:
        if b not in ALGORITHMS:
            raise ValueError(f"unknown backend {b!r}; choose shm, mpi or shm,mpi")
    known = {a for algs in ALGORITHMS.values() for a in algs}
    for a in wanted:
        if a != "all" and a not in known:
            raise ValueError(f"unknown algorithm {a!r}; choose from {', '.join(sorted(known))}")
    return [(b, a) for b in backends for a in ALGORITHMS[b] if "all" in wanted or a in wanted]


def _mpi_ready() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'minilepton[mpi]')"
    return None if find_mpiexec() else "mpiexec not found (pip install mpich)"


def measure(args) -> dict:
    """Run every contender ``rounds`` times per world size; the medians and the machine."""
    sizes, paths = parse_sizes(args.sizes), [p.strip() for p in args.paths.split(",")]
    if set(paths) - set(PATHS) or not paths:
        raise ValueError(f"--paths takes arena, private or both, not {args.paths!r}")
    jobs = _contenders(args) + ([] if args.no_baseline else [("mpich", "raw")])
    jobs.append(("memcpy", "copy"))
    missing = _mpi_ready()
    if missing:
        print(f"skipping MPI and the MPICH baseline: {missing}", file=sys.stderr)
        jobs = [job for job in jobs if job[0] in ("shm", "memcpy")]
    table, library = [], None
    for P in [int(p) for p in args.workers.split(",")]:
        runs: dict = {}
        for rnd in range(args.rounds):
            for k in range(len(jobs)):
                backend, algorithm = jobs[(k + rnd) % len(jobs)]
                if backend == "mpich":
                    times, library = launch(raw_mpi_job, P, args=(sizes, args.repeats,
                                                                   args.target_ms),
                                            backend="mpi")[0]
                elif backend == "memcpy":
                    times = launch(copy_job, P, args=(sizes, args.repeats, args.target_ms))[0]
                else:
                    times = launch(minilepton_job, P, backend=backend,
                                   args=(sizes, paths, algorithm, args.repeats,
                                         args.target_ms))[0]
                for (path, nbytes), ts in times.items():
                    runs.setdefault((backend, algorithm, path, nbytes), []).extend(ts)
                print(f"P={P} round {rnd + 1}/{args.rounds}: {backend} {algorithm} done",
                      file=sys.stderr, flush=True)
        table += rows(P, runs, sizes)
    return {"machine": machine(library, {P: share(int(P)) for P in args.workers.split(",")}),
            "command": _command(args),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "figure")},
            "results": table}


def _command(args) -> str:
    words = ["minilepton bench allreduce"]
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words.append(f"{flag} {value}")
    return " ".join(words)


def run(args) -> int:
    try:
        result = measure(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result["results"]))
    if args.json:
        save_json(result, args.json)
        print(f"wrote {args.json}")
    if args.figure:
        plot(result, args.figure)
        print(f"wrote {args.figure}")
    return 0


