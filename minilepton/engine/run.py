"""One entry for every layout: ``train(cfg)`` runs 1 or P workers, on shm, MPI or inside mpiexec.

    train(cfg) ─┬─ inside `mpiexec -n P`:  this process is rank r of P  ─┐
                ├─ world size 1:           this process, LocalComm       ├─> worker(comm, cfg)
                └─ world size P > 1:       launch P workers (shm or MPI) ─┘

``worker`` is the whole run of one rank: data, device, the strategy from the recipe, the loop.
Rank 0 returns the metrics dict (with ``bytes_per_step``, ``comm_seconds_fraction`` and
``backend``); ``train`` returns it. ``minilepton train`` is ``train(config_from_args(...))``.
Workers are processes: a script that calls ``train`` with workers needs the
``if __name__ == "__main__":`` guard (the ``spawn`` start method re-imports the script).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile

import numpy as np

from .. import backend, environment
from ..cluster import launch
from ..cluster.blas import limit_threads, share
from ..cluster.faults import parse_fault
from ..cluster.malloc import keep_freed_memory
from ..cluster.mpi_direct import in_mpi_job, init_mpi, run_direct
from ..comm.device_staging import wrap_for_device
from ..comm.local import LocalComm
from ..data import dataset_dir
from ..files import check_writable
from ..parallel.mesh import check_layout
from ..parallel.options import memory_conflict
from . import restarts
from .config import TrainConfig
from .hooks import default_hooks
from .loop import fit
from .recipe import N_CLASSES, N_FEATURES, build_strategy, load_arrays
from .trace import Tracer


class OtherRankError(ValueError):
    """Raised on the ranks of an mpiexec job other than 0, whose rank 0 reports the error."""


def normalise(cfg: TrainConfig, world_size: int | None = None) -> TrainConfig:
    """``--workers P`` alone (or P ranks from mpiexec) means ``--dp P``: data parallel."""
    workers = cfg.workers if cfg.workers is not None else world_size
    if workers is not None and workers > 1 and cfg.dp * cfg.tp * cfg.pp == 1:
        return dataclasses.replace(cfg, dp=workers)
    return cfg


def check(cfg: TrainConfig, n_features: int = N_FEATURES) -> None:
    """One-line ValueError for a layout that cannot run (before any worker starts)."""
    check_layout(cfg, [n_features, *cfg.hidden, N_CLASSES])
    if cfg.sync_every > 1 and cfg.compress != "none":
        raise ValueError("--compress applies to the gradient all-reduce; it cannot be combined "
                         "with --sync-every > 1 (local SGD averages parameters instead)")
    if cfg.device == "gpu" and cfg.compress != "none":
        raise ValueError("--compress runs on the CPU; on a GPU use --compress none")
    if cfg.tp * cfg.pp > 1 and (cfg.sync_every > 1 or cfg.balance != "none"):
        raise ValueError("--sync-every and --balance act on data parallelism alone; "
                         "use them without --tp/--pp")
    conflict = memory_conflict(zero=cfg.zero, precision=cfg.precision, grad_accum=cfg.grad_accum,
                               batch_size=cfg.batch_size, dp=cfg.dp, pp=cfg.pp,
                               sync_every=cfg.sync_every, compress=cfg.compress,
                               overlap=cfg.overlap, device=requested_device(cfg))
    if cfg.overlap and (cfg.sync_every > 1 or requested_device(cfg) == "gpu"):
        raise ValueError("--overlap sends gradient buckets from a thread on the CPU while "
                         "backward runs; it needs the gradient all-reduce (no --sync-every) "
                         "and --device cpu")
    if conflict:
        raise ValueError(conflict)
    for spec in cfg.fault:
        fault = parse_fault(spec)
        if fault.rank >= cfg.world_size:
            raise ValueError(f"--fault {spec}: rank {fault.rank} of {cfg.world_size} workers")
    if cfg.checkpoint_every and not (cfg.checkpoint_dir or cfg.max_restarts):
        raise ValueError("--checkpoint-every needs --checkpoint-dir DIR (or --max-restarts, "
                         "which keeps its checkpoints in a private folder)")
    for flag, path in (("--metrics-json", cfg.metrics_json), ("--save", cfg.save),
                       ("--trace", cfg.trace)):
        if path:
            check_writable(path, flag)
    if cfg.checkpoint_dir:
        check_writable(cfg.checkpoint_dir, "--checkpoint-dir", directory=True)
    if cfg.trace and cfg.world_size == 1:
        raise ValueError("--trace records a parallel run's timeline; add --workers, --tp or --pp")


def requested_device(cfg: TrainConfig) -> str:
    """``cfg.device``, except that ``auto`` means the CPU for what runs only there."""
    if cfg.device == "auto" and (cfg.tp * cfg.pp != 1 or cfg.compress != "none" or cfg.zero
                                 or cfg.precision == "bf16"):
        return "cpu"
    return cfg.device


def worker(comm, cfg: TrainConfig, arrays=None, log=None, run_dir=None):
    """One rank's whole run; rank 0 returns the metrics dict, the others None."""
    x_train, y_train, x_test, y_test = arrays if arrays is not None else load_arrays(cfg)
    # features in the model's dtype (given arrays may be float64 for a float32 model)
    x_train, x_test = (np.asarray(x, dtype=cfg.dtype) for x in (x_train, x_test))
    cfg = dataclasses.replace(cfg, device=backend.resolve_device(requested_device(cfg)))
    if cfg.device == "gpu":
        if comm.world_size > 1:  # the GPU of this worker's local rank; collectives via host
            backend.set_gpu_for_local_rank(environment.read("LOCAL_RANK", comm.rank))
            comm = wrap_for_device(comm, "gpu")
        x_train, y_train, x_test, y_test = (backend.to_device(a, "gpu")
                                            for a in (x_train, y_train, x_test, y_test))
    tracer = Tracer(comm.rank) if cfg.trace else None
    strategy = build_strategy(comm, cfg, x_train.shape[1], tracer)
    metrics = fit(strategy, x_train, y_train, x_test, y_test, cfg,
                  hooks=default_hooks(cfg, log, tracer, run_dir))
    return metrics if strategy.is_main else None


def train(cfg: TrainConfig, arrays=None, timeout_s: float | None = None, log=None) -> dict:
    """Train ``cfg`` in whatever layout it asks for; the metrics dict of rank 0.

    ``arrays`` = (x_train, y_train, x_test, y_test) skips loading the dataset named by ``cfg``;
    ``timeout_s`` bounds a multi-worker job (the launcher stops it and names the stalled rank);
    ``log(line)`` receives the epoch lines instead of stdout (one process only).
    """
    environment.check()  # a bad MINILEPTON_* value is one line, before any work
    if in_mpi_job():  # `mpiexec -n P minilepton train ...`: this process is one rank of P
        return _train_in_mpi_job(cfg, arrays)
    cfg = normalise(cfg)
    n_features = arrays[0].shape[1] if arrays is not None else N_FEATURES
    check(cfg, n_features)
    supervised = cfg.max_restarts > 0 or bool(cfg.fault)  # a failure must not end this process
    if cfg.world_size == 1 and not supervised:
        if cfg.blas_threads is not None:  # this whole process, from now on
            limit_threads(cfg.blas_threads)
        return worker(LocalComm(), cfg, arrays, log)
    if log is not None:
        raise ValueError("log= takes the lines of a one-process run; workers print theirs")
    if arrays is None:  # found (or downloaded) once, here: a missing data set stops us now
        directory = dataset_dir(cfg.dataset, cfg.data_dir)
        cfg = dataclasses.replace(cfg, data_dir=None if directory is None else str(directory))
    device = backend.resolve_device_in_launcher(requested_device(cfg))  # no CUDA here
    cfg = dataclasses.replace(cfg, device=device)
    options = {"log_dir": cfg.log_dir, "blas_threads": cfg.blas_threads, "timeout_s": timeout_s,
               "start_method": backend.start_method_for(device) if device == "gpu" else None,
               "link": None if cfg.link == "none" else cfg.link,
               "node_speeds": list(cfg.node_speeds) if cfg.node_speeds else None}
    options = {k: v for k, v in options.items() if v is not None}
    if not supervised:
        return launch(worker, cfg.world_size, args=(cfg, arrays), backend=cfg.backend,
                      **options)[0]
    run_dir = tempfile.mkdtemp(prefix="minilepton-run-")  # private (0700): fault markers, and
    try:                                                  # checkpoints when none were asked for
        return restarts.supervise(cfg, arrays, options, run_dir, worker)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def _train_in_mpi_job(cfg: TrainConfig, arrays):
    """This process is one rank of an mpiexec job: the world size is MPI's."""
    MPI = init_mpi()
    world = MPI.COMM_WORLD
    size, rank = world.Get_size(), world.Get_rank()
    on_this_node = world.Split_type(MPI.COMM_TYPE_SHARED).Get_size()  # (a collective)
    limit_threads(share(on_this_node, cfg.blas_threads))  # as the launcher gives its workers
    keep_freed_memory()
    try:  # every rank checks; rank 0 alone reports
        cfg = normalise(cfg, size)
        if cfg.world_size != size:
            raise ValueError(f"mpiexec started {size} ranks but the run asks for "
                             f"{cfg.world_size} workers (--workers/--dp/--tp/--pp); "
                             "drop --workers or match mpiexec -n")
        if cfg.max_restarts:
            raise ValueError("--max-restarts needs a launcher to start the ranks again, and "
                             "mpiexec starts them here: run `minilepton train --backend mpi "
                             f"--workers {size} --max-restarts {cfg.max_restarts} ...` instead "
                             "of inside mpiexec")
        check(cfg, arrays[0].shape[1] if arrays is not None else N_FEATURES)
    except ValueError as exc:
        if rank:
            raise OtherRankError(str(exc)) from None
        raise
    metrics = run_direct(worker, (cfg, arrays))
    return metrics if metrics is not None else {}
