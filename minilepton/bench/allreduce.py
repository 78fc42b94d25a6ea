"""All-reduce (float32, in-place sum) on shm and MPI, against raw mpi4py + MPICH in the same run.

    minilepton bench allreduce --workers 2,4 --sizes 1KiB,64KiB,1MiB,16MiB,64MiB \\
        --backend shm,mpi --json benchmarks/allreduce.json --figure figures/allreduce.png

Contenders: every (backend, algorithm) asked for, each on arena arrays (``comm.zeros``: on shm
they live in shared memory, on MPI they are ordinary arrays) and on private NumPy arrays, plus
the baseline: plain ``comm.Allreduce(MPI.IN_PLACE, x)`` of mpi4py on a NumPy array under
mpiexec. Each round launches every contender once, in a rotating order, and inside a job the
repeats cycle over sizes and paths, so that a slow window of a shared machine hits them all
alike. Reported: the median time per call over all repeats, algbw = bytes / time, busbw =
2(P−1)/P · bytes / time (the nccl-tests convention: what each rank's link must carry) and the
speed relative to the MPICH baseline (>1: faster).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import numpy as np

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
    from ..comm.arena import parse_bytes  # noqa: PLC0415

    sizes = [parse_bytes(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) < 4:
        raise ValueError(f"--sizes needs sizes of at least 4 bytes, got {text!r}")
    return sizes


# ---- what runs on the ranks
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
    from mpi4py import MPI  # noqa: PLC0415

    world = comm.comm
    buffers = {"private": np.zeros(max(sizes) // 4, np.float32)}
    def allreduce(x):
        return world.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    times = _cycle(comm, allreduce, buffers, sizes, repeats, target_ms, world.Barrier)
    return times, MPI.Get_library_version().splitlines()[0].strip()


def _cycle(comm, allreduce, buffers, sizes, repeats, target_ms, barrier):
    """Warm up, agree on a number of calls per (path, size), then time the repeats, cycling
    over sizes and paths."""
    for x in buffers.values():  # page faults, scratch buffers
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
    import importlib.util  # noqa: PLC0415

    from ..cluster.mpi_launch import find_mpiexec  # noqa: PLC0415

    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install 'minilepton[mpi]')"
    return None if find_mpiexec() else "mpiexec not found (pip install mpich)"


def measure(args) -> dict:
    """Run every contender ``rounds`` times per world size; the medians and the machine."""
    from ..cluster import launch  # noqa: PLC0415
    from ..cluster.blas import share  # noqa: PLC0415

    sizes, paths = parse_sizes(args.sizes), [p.strip() for p in args.paths.split(",")]
    if set(paths) - set(PATHS) or not paths:
        raise ValueError(f"--paths takes arena, private or both, not {args.paths!r}")
    jobs = _contenders(args) + ([] if args.no_baseline else [("mpich", "raw")])
    missing = _mpi_ready()
    if missing:
        print(f"skipping MPI and the MPICH baseline: {missing}", file=sys.stderr)
        jobs = [job for job in jobs if job[0] == "shm"]
    rows, library = [], None
    for P in [int(p) for p in args.workers.split(",")]:
        runs: dict = {}
        for rnd in range(args.rounds):
            for k in range(len(jobs)):
                backend, algorithm = jobs[(k + rnd) % len(jobs)]
                if backend == "mpich":
                    times, library = launch(raw_mpi_job, P, args=(sizes, args.repeats,
                                                                   args.target_ms),
                                            backend="mpi")[0]
                else:
                    times = launch(minilepton_job, P, backend=backend,
                                   args=(sizes, paths, algorithm, args.repeats,
                                         args.target_ms))[0]
                for (path, nbytes), ts in times.items():
                    runs.setdefault((backend, algorithm, path, nbytes), []).extend(ts)
                print(f"P={P} round {rnd + 1}/{args.rounds}: {backend} {algorithm} done",
                      file=sys.stderr, flush=True)
        rows += _rows(P, runs, sizes)
    return {"machine": _machine(library, {P: share(int(P)) for P in args.workers.split(",")}),
            "command": _command(args),
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "figure")},
            "results": rows}


def _command(args) -> str:
    words = ["minilepton bench allreduce"]
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words.append(f"{flag} {value}")
    return " ".join(words)


def _rows(P, runs, sizes) -> list[dict]:
    rows = []
    for (backend, algorithm, path, nbytes), ts in sorted(runs.items(), key=lambda kv: kv[0][3]):
        t = float(np.median(ts))
        base = runs.get(("mpich", "raw", "private", nbytes))
        rows.append({"P": P, "backend": backend, "algorithm": algorithm, "path": path,
                     "bytes": nbytes, "seconds": t, "repeats": len(ts),
                     "algbw_GBps": nbytes / t / 1e9,
                     "busbw_GBps": 2 * (P - 1) / P * nbytes / t / 1e9 if P > 1 else None,
                     "vs_mpich": float(np.median(base)) / t if base else None})
    return rows


def _machine(library, blas_threads) -> dict:
    from .. import __version__  # noqa: PLC0415

    try:
        from mpi4py import __version__ as mpi4py_version  # noqa: PLC0415 - no MPI init
    except ImportError:
        mpi4py_version = None
    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "cpu": _cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "minilepton": __version__, "mpi4py": mpi4py_version, "mpi_library": library,
            "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "blas_threads_per_worker": blas_threads}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def format_table(rows) -> str:
    head = (f"{'P':>2} {'backend':7} {'algorithm':9} {'path':8} {'size':>9} {'time/call':>11} "
            f"{'algbw':>10} {'busbw':>10} {'vs MPICH':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        busbw = f"{r['busbw_GBps']:7.2f} GB/s" if r["busbw_GBps"] is not None else f"{'-':>10}"
        ratio = f"{r['vs_mpich']:8.2f}x" if r["vs_mpich"] else f"{'-':>9}"
        lines.append(f"{r['P']:>2} {r['backend']:7} {r['algorithm']:9} {r['path']:8} "
                     f"{_size(r['bytes']):>9} {r['seconds'] * 1e6:9.1f}µs "
                     f"{r['algbw_GBps']:5.2f} GB/s {busbw} {ratio}")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


def run(args) -> int:
    try:
        result = measure(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result["results"]))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        print(f"wrote {args.json}")
    if args.figure:
        plot(result, args.figure)
        print(f"wrote {args.figure}")
    return 0


STYLE = {"rsag": "-", "ordered": "-", "native": "-.", "ring": ":", "raw": "--"}
COLOR = {("shm", "arena"): "tab:blue", ("shm", "private"): "tab:cyan",
         ("mpi", "arena"): "tab:red", ("mpi", "private"): "tab:orange",
         ("mpich", "private"): "black"}


def plot(result, path: str) -> None:
    """busbw against size, one panel per world size, one line per contender and path."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = result["results"]
    sizes_P = sorted({r["P"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes_P), figsize=(6.5 * len(sizes_P), 4.6), squeeze=False)
    for ax, P in zip(axes[0], sizes_P):
        lines: dict = {}
        for r in rows:
            if r["P"] == P and r["busbw_GBps"] is not None:
                key = (r["backend"], r["algorithm"], r["path"])
                lines.setdefault(key, []).append((r["bytes"], r["busbw_GBps"]))
        for (backend, algorithm, path_), points in sorted(lines.items()):
            xs, ys = zip(*sorted(points))
            label = "raw mpi4py + MPICH" if backend == "mpich" else \
                f"{backend} {algorithm} ({path_})"
            ax.plot(xs, ys, STYLE.get(algorithm, "-"), marker="o", ms=3, label=label,
                    color=COLOR.get((backend, path_), "gray"), lw=2 if backend == "mpich" else 1.4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({r["bytes"] for r in rows})
        ax.set_xticks(ticks, [_size(b) for b in ticks])
        ax.set_xlabel("message size")
        ax.set_ylabel("busbw = 2(P−1)/P · bytes / time (GB/s)")
        ax.set_title(f"float32 in-place sum all-reduce, P = {P}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    machine = result["machine"]
    load = machine.get("load_average_1min_at_end")
    fig.suptitle(f"{machine['cores']} cores, {machine['cpu']}; medians"
                 + (f"; load average {load:.1f} at the end" if load is not None else ""),
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
