"""The all-reduce benchmark's results: rows with bandwidths and ratios, the machine, a table
and a figure.

algbw = bytes / time; busbw = 2(P−1)/P · bytes / time (the nccl-tests convention: what each
rank's link must carry); ``vs_mpich`` = MPICH's median time / this median time (>1: faster).

Two copy bandwidths of the same run, every rank copying at once (``copy_job``): ``copy_GBps``,
a memcpy between two private arrays, and ``pull_GBps``, a memcpy out of the array the next rank
has just written. The second is the limit. Whatever the algorithm, an all-reduce must bring
into each rank 2(P−1)/P·N bytes that its peers wrote (in a reduce-scatter and all-gather,
(P−1)/P·N of inputs and as much of results), and busbw counts exactly those bytes per second;
so an all-reduce whose only cost were those pulls would reach busbw = ``pull_GBps``, and
``of_limit`` = busbw / ``pull_GBps``. The limit is not a plain memcpy: data another core has
just written comes from that core's cache or from memory, at about half the speed of a copy
inside one core's L2 (benchmarks/README.md, "All-reduce at the memory limit"). It can be
passed by a few per cent when nothing fits in cache: the pull's copy then pays a write-allocate
(its destination is read before it is written) that a fold into an array it has just read
does not.
"""

from __future__ import annotations

import os
import platform

import numpy as np

from .. import __version__
from ..backend import cpu_model
from ._common import save_figure


def rows(P, runs, sizes) -> list[dict]:
    rows = []
    for (backend, algorithm, path, nbytes), ts in sorted(runs.items(), key=lambda kv: kv[0][3]):
        if backend == "memcpy":
            continue
        t = float(np.median(ts))
        base = runs.get(("mpich", "raw", "private", nbytes))
        copy_GBps, pull_GBps = (_bandwidth(runs.get(("memcpy", "copy", how, nbytes)), nbytes)
                                for how in ("copy", "pull"))
        busbw = 2 * (P - 1) / P * nbytes / t / 1e9 if P > 1 else None
        limit = pull_GBps if P > 1 else None
        rows.append({"P": P, "backend": backend, "algorithm": algorithm, "path": path,
                     "bytes": nbytes, "seconds": t, "repeats": len(ts),
                     "algbw_GBps": nbytes / t / 1e9, "busbw_GBps": busbw,
                     "vs_mpich": float(np.median(base)) / t if base else None,
                     "copy_GBps": copy_GBps, "pull_GBps": pull_GBps, "limit_busbw_GBps": limit,
                     "of_limit": busbw / limit if limit else None})
    return rows


def _bandwidth(times, nbytes: int) -> float | None:
    return nbytes / float(np.median(times)) / 1e9 if times else None


def machine(library, blas_threads) -> dict:
    try:
        from mpi4py import __version__ as mpi4py_version  # optional; this does not start MPI
    except ImportError:
        mpi4py_version = None
    return {"cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__,
            "minilepton": __version__, "mpi4py": mpi4py_version, "mpi_library": library,
            "load_average_1min_at_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "blas_threads_per_worker": blas_threads}


def format_table(rows) -> str:
    head = (f"{'P':>2} {'backend':7} {'algorithm':9} {'path':8} {'size':>9} {'time/call':>11} "
            f"{'algbw':>10} {'busbw':>10} {'vs MPICH':>9} {'copy':>10} {'pull':>10} {'of pull':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        busbw = f"{r['busbw_GBps']:7.2f} GB/s" if r["busbw_GBps"] is not None else f"{'-':>10}"
        ratio = f"{r['vs_mpich']:8.2f}x" if r["vs_mpich"] else f"{'-':>9}"
        copy, pull = (f"{r[k]:5.2f} GB/s" if r.get(k) else f"{'-':>10}"
                      for k in ("copy_GBps", "pull_GBps"))
        limit = f"{r['of_limit']:7.0%}" if r.get("of_limit") else f"{'-':>8}"
        lines.append(f"{r['P']:>2} {r['backend']:7} {r['algorithm']:9} {r['path']:8} "
                     f"{_size(r['bytes']):>9} {r['seconds'] * 1e6:9.1f}µs "
                     f"{r['algbw_GBps']:5.2f} GB/s {busbw} {ratio} {copy} {pull} {limit}")
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{unit}"
    return f"{nbytes}B"


STYLE = {"rsag": "-", "ordered": "-", "native": "-.", "ring": ":", "raw": "--"}
COLOR = {("shm", "arena"): "tab:blue", ("shm", "private"): "tab:cyan",
         ("mpi", "arena"): "tab:red", ("mpi", "private"): "tab:orange",
         ("mpich", "private"): "black"}


def plot(result, path: str) -> None:
    """busbw against size, one panel per world size, one line per contender and path."""
    import matplotlib  # optional, for --figure only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    save_figure(fig, path)
