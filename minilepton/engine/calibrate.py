"""``minilepton calibrate``: measure this machine for the cost model, in well under a minute.

What is timed (each a median over repeats, in this process unless said otherwise):

- **matrix products**: GFLOP/s of ``a @ b`` on a grid of (m, k, n), float32 and float64, with
  one BLAS thread and with all cores (``sim.measured`` reads between the points), the operands
  taken in turn from copies that overflow the caches, as in a training step;
- **memory-bound work**: ``np.add`` on arrays from 1 KiB to 64 MiB (per call: in cache or not);
- **optimizer updates**: ``Adam.step`` and ``SGD.step`` on one tensor of 16 to 1M elements
  (copies in turn, as for the products);
- **the engine's own cost**: whole training steps of tiny MLPs (1 to 6 blocks, 8 features, so
  the arithmetic is nothing) on the real strategy; a straight line through them gives the cost
  per step and per block, the optimizer's loop gives the cost per tensor, a pipeline of one
  stage the cost per micro-batch;
- **collectives** (``calibrate_comm``): worker processes on the shared-memory backend (and MPI
  when installed) time all-reduce, all-gather, reduce-scatter, broadcast and send/recv at
  P = 2 and 4; a line t = a + b·N per operation is fitted;
- **layouts in real steps** (``calibrate_layouts``): tiny models trained with data, tensor and
  pipeline parallelism at P = 2 and 4 give what those layouts cost beyond the above, and runs of
  real size how much concurrent workers slow each other.

The profile is a JSON file in the per-user cache folder (``$XDG_CACHE_HOME/minilepton`` or
``~/.cache/minilepton``), written whole or not at all (``files.atomic_write_text``), and
``minilepton simulate`` reads it (calibrating first if there is none for this machine).
"""

from __future__ import annotations

import itertools
import json
import operator
import os
import platform
import socket
import statistics
import time
from pathlib import Path

import numpy as np

from .. import __version__, environment, nn, optim
from ..backend import cpu_count, cpu_model
from ..cluster.blas import limit_threads
from ..comm.local import LocalComm
from ..files import atomic_write_text
from ..parallel.mesh import Mesh
from ..parallel.pipeline import PipelineParallel
from ..parallel.strategy import ParallelStrategy
from .calibrate_comm import measure_collectives
from .calibrate_layouts import measure_layouts

M_AXIS = [1, 8, 32, 128, 512, 2048]
KN_AXIS = [16, 64, 256, 1024, 4096]
FLOP_CAP = 2e8            # larger products are timed with fewer rows (same rate per FLOP),
MIN_ROWS = 64             # but never so few that the product becomes memory-bound
COLD_BYTES = 16 << 20     # operand copies per cell: more than the caches hold
MEMORY_SIZES = [1 << 10, 1 << 13, 1 << 16, 1 << 19, 1 << 22, 1 << 26]
OPTIMIZER_SIZES = [16, 1024, 65536, 1 << 20]


def cache_dir() -> Path:
    """The per-user cache folder of minilepton (created on first write)."""
    base = environment.read("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "minilepton"


def profile_path() -> Path:
    """Where this machine's profile is kept (one per host name)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())
    return cache_dir() / f"profile-{host or 'host'}.json"


def _batch_times(fn, target_s: float = 0.004, repeats: int = 3) -> list[float]:
    """Seconds per call of ``fn`` in each of ``repeats`` batches of about ``target_s``."""
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)  # the first call warms up (pages, caches)
    calls = max(1, min(10000, int(target_s / once)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return times


def _median_time(fn, target_s: float = 0.004, repeats: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` batches of about ``target_s`` each."""
    return statistics.median(_batch_times(fn, target_s, repeats))


def measure_matmul(dtype: str, threads: int, passes: int = 2) -> dict:
    """GFLOP/s over the (m, k, n) grid with ``threads`` BLAS threads: the grid is walked
    ``passes`` times and each cell keeps the median of all its timed batches, so that a burst
    of load from another process hits one pass of a cell, not the cell."""
    limit_threads(threads)
    cells = [(m, k, n) for k in KN_AXIS for n in KN_AXIS for m in M_AXIS]
    times: dict = {cell: [] for cell in cells}
    rows_of, arrays = {}, {}
    itemsize = np.dtype(dtype).itemsize

    def operands(rows, k, n):
        """Enough copies of the operands to overflow the caches, used in turn: in a training
        step a product's operands come from memory, not from the last identical product."""
        key = (rows, k, n)
        if key not in arrays:
            copies = int(min(16, max(1, COLD_BYTES // (itemsize * (rows * k + k * n)))))
            arrays[key] = [(np.full((rows, k), 0.5 + i, dtype=dtype),
                            np.full((k, n), 0.5 - i / 64, dtype=dtype)) for i in range(copies)]
        return itertools.cycle(arrays[key])

    for _ in range(passes):
        for m, k, n in cells:
            rows = m
            while rows > MIN_ROWS and 2 * rows * k * n > FLOP_CAP:
                rows //= 4
            rows_of[(m, k, n)] = rows
            turn = operands(rows, k, n)
            times[(m, k, n)] += _batch_times(lambda turn=turn: operator.matmul(*next(turn)),
                                             0.0025, 2)
    rate = {c: 2 * rows_of[c] * c[1] * c[2] / statistics.median(ts) / 1e9
            for c, ts in times.items()}
    grid = [[[rate[(m, k, n)] for n in KN_AXIS] for k in KN_AXIS] for m in M_AXIS]
    return {"axes": [M_AXIS, KN_AXIS, KN_AXIS], "gflops": grid}


def measure_memory() -> list:
    """[(array bytes, seconds for NumPy to move that many bytes)], from ``np.add(a, b, out=c)``
    (three arrays of the size move 3× its bytes)."""
    out = []
    for nbytes in MEMORY_SIZES:
        a, b, c = (np.ones(nbytes // 4, np.float32) for _ in range(3))
        out.append([nbytes, _median_time(lambda a=a, b=b, c=c: np.add(a, b, out=c)) / 3])
    return out


def measure_optimizers() -> dict:
    """{optimizer: {dtype: [(elements, seconds per step of one tensor)]}}."""
    out: dict = {}
    for name in ("adam", "sgd"):
        for dtype in ("float32", "float64"):
            table = []
            for n in OPTIMIZER_SIZES:  # copies used in turn, so the state comes from memory
                copies = int(min(8, max(1, COLD_BYTES // (4 * n * np.dtype(dtype).itemsize))))
                opts = []
                for _ in range(copies):
                    p = nn.Parameter(np.ones(n, dtype=dtype))
                    p.grad = np.full(n, 1e-3, dtype=dtype)
                    opts.append(optim.Adam([p], lr=1e-3) if name == "adam"
                                else optim.SGD([p], lr=1e-3))
                turn = itertools.cycle(opts)
                table.append([n, _median_time(lambda turn=turn: next(turn).step())])
            out.setdefault(name, {})[dtype] = table
    return out


def _tiny_step_seconds(blocks: int) -> float:
    """One loop iteration (slice the batch, the strategy's whole step) of an MLP of ``blocks``
    Linear layers of width 8, batch 8, Adam: nearly all of it is the engine's Python."""
    sizes = [8] * blocks + [4]
    model = nn.mlp(sizes, seed=0)
    strategy = ParallelStrategy(Mesh(LocalComm()), model, lambda ps: optim.Adam(ps, lr=1e-3))
    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    y = np.arange(64) % 4
    idx = np.arange(8)

    def step():
        local = strategy.local_indices(idx)
        strategy.train_step(x[local], y[local], len(idx))

    return _median_time(step, target_s=0.02)


def _fit_line(xs, ys) -> tuple[float, float]:
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(intercept), float(slope)


def measure_engine() -> dict:
    """Seconds per step, per block, per optimizer tensor and per pipeline micro-batch."""
    counts = [1, 2, 4, 6]
    c0, c1 = _fit_line(counts, [_tiny_step_seconds(b) for b in counts])
    tensors = [2, 8, 16]
    step_times = []
    for n in tensors:
        params = [nn.Parameter(np.ones(8, np.float32)) for _ in range(n)]
        for p in params:
            p.grad = np.ones(8, np.float32)
        opt = optim.Adam(params, lr=1e-3)
        step_times.append(_median_time(opt.step))
    _, tensor_s = _fit_line(tensors, step_times)
    idx = np.arange(64)
    x = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    y = idx % 4

    def pipeline_seconds(micro):
        stage = nn.mlp([8, 8, 4], seed=0)
        pipe = PipelineParallel(stage, LocalComm(), [8, 4], micro, "gpipe")
        return _median_time(lambda: pipe.train_step(x, y, 64), target_s=0.02)

    one, eight = pipeline_seconds(1), pipeline_seconds(8)
    block_s = max(c1 - 2 * tensor_s, 1e-7)
    microbatch_s = max((eight - one) / 7 - 2 * block_s, 0.0)
    small = idx[:8]
    pass_s = _median_time(lambda: (x[small], y[small]), target_s=0.005)
    return {"step_s": max(c0 - pass_s, 0.0), "pass_s": pass_s, "block_s": block_s,
            "tensor_s": max(tensor_s, 0.0), "microbatch_s": microbatch_s}


def _memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8.0 * 2 ** 30


def _process_bytes() -> float:
    try:
        with open("/proc/self/statm") as f:
            return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def calibrate(log=print, collectives: bool = True, quick: bool = False) -> dict:
    """Measure this machine; the profile as a dict (see the module docstring). ``quick``: one
    pass over the float32 grid, the shared-memory backend at P = 2 only (a few seconds, for the
    tutorials' quick mode; predictions for float64 or 4 workers then read the nearest table)."""
    t0 = time.perf_counter()
    cores = cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    threads = sorted({1, cores})
    log(f"calibrating this machine ({cores} cores, load average {load:.2f}): matrix products"
        if load is not None else f"calibrating this machine ({cores} cores): matrix products")
    dtypes = ("float32",) if quick else ("float32", "float64")
    matmul = {dtype: {str(t): measure_matmul(dtype, t, passes=1 if quick or dtype != "float32"
                                             else 2) for t in threads}
              for dtype in dtypes}
    limit_threads(cores)
    log("memory-bound work, optimizers, the engine's own cost")
    profile = {
        "name": "this-machine", "kind": "measured",
        "description": f"{cpu_model()}, {cores} cores, measured by minilepton calibrate",
        "created_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "machine": {"cores": cores, "cpu": cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "minilepton": __version__, "load_average_1min": load},
        "cores": cores, "memory_bytes": _memory_bytes(), "process_bytes": _process_bytes(),
        "matmul": matmul, "memory": measure_memory(), "optimizer": measure_optimizers(),
        "engine": measure_engine(),
    }
    if collectives:
        log("collectives between worker processes (P = 2" + (")" if quick else " and 4)"))
        worlds = (2,) if quick else (2, 4)
        profile["collectives"] = measure_collectives(log=log, worlds=worlds, mpi=not quick)
        log("data, tensor and pipeline parallelism inside real training steps")
        profile["engine"]["layouts"] = measure_layouts(profile, log=log, worlds=worlds)
    profile["calibration_seconds"] = time.perf_counter() - t0
    return profile


def save(profile: dict, path=None) -> Path:
    """Write ``profile`` atomically (default: ``profile_path()``); return the path."""
    path = Path(path) if path else profile_path()
    atomic_write_text(path, json.dumps(profile, indent=1) + "\n")
    return path


def load_or_calibrate(log=print) -> tuple[dict, Path]:
    """This machine's profile from the cache, measured first when missing or made on a machine
    with another number of cores."""
    path = profile_path()
    if path.is_file():
        try:
            profile = json.loads(path.read_text())
            if profile.get("kind") == "measured" and profile.get("cores") == cpu_count() \
                    and "layouts" in profile.get("engine", {}):
                return profile, path
        except (OSError, json.JSONDecodeError):
            pass
        log(f"{path} is stale or unreadable: measuring again")
    profile = calibrate(log=log)
    return profile, save(profile, path)
