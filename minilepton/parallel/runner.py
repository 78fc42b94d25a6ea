"""The multi-worker entry point behind ``minilepton train --workers P`` (and ``--dp/--tp/--pp``).

``run(cfg)`` checks the layout, starts ``cfg.world_size`` workers (or, inside an ``mpiexec`` job,
becomes one of them), and each worker builds the same seeded model, wraps it in a strategy
(data parallel when tp = pp = 1, else the model-parallel strategy of the mesh) and calls the
shared ``train.fit``. Rank 0 prints the single-process epoch lines plus the bytes it sent per
step; its metrics dict comes back, with ``bytes_per_step`` and ``comm_seconds_fraction`` added.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from ..config import TrainConfig


def normalise(cfg: TrainConfig) -> TrainConfig:
    """``--workers P`` alone means ``--dp P`` (data parallel across all the workers)."""
    if cfg.workers is not None and cfg.dp * cfg.tp * cfg.pp == 1 and cfg.workers > 1:
        return dataclasses.replace(cfg, dp=cfg.workers)
    return cfg


def check(cfg: TrainConfig, sizes) -> None:
    """One-line ValueError for a layout that cannot run (before any worker starts)."""
    try:
        from .mesh import check_layout  # noqa: PLC0415 - the mesh checks hybrid layouts
    except ImportError:
        check_layout = None
    if check_layout is not None:
        check_layout(cfg, sizes)
    elif cfg.tp * cfg.pp != 1 or cfg.dp != cfg.world_size:
        raise ValueError(f"data parallelism needs --dp {cfg.world_size} (= --workers), "
                         f"not --dp {cfg.dp} --tp {cfg.tp} --pp {cfg.pp}")
    if cfg.sync_every > 1 and cfg.compress != "none":
        raise ValueError("--compress applies to the gradient all-reduce; it cannot be combined "
                         "with --sync-every > 1 (local SGD averages parameters instead)")
    if cfg.device == "gpu" and cfg.compress != "none":
        raise ValueError("--compress runs on the CPU; on a GPU use --compress none")


def requested_device(cfg: TrainConfig) -> str:
    """``cfg.device``, except that ``auto`` means the CPU for what runs only there."""
    if cfg.device == "auto" and (cfg.tp * cfg.pp != 1 or cfg.compress != "none"):
        return "cpu"
    return cfg.device


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def _comm_report(strategy, comm, n_steps: int, train_seconds: float) -> dict:
    if hasattr(strategy, "comm_report"):
        return strategy.comm_report()
    return {"bytes_per_step": comm.stats.bytes_sent / max(n_steps, 1),
            "comm_seconds_fraction": sum(comm.stats.seconds.values()) / max(train_seconds, 1e-12)}


def build_strategy(comm, cfg: TrainConfig, sizes):
    """Data parallel when tp = pp = 1 (every rank builds the same seeded model), else the
    model-parallel strategy for the dp × tp × pp mesh."""
    from ..train import build_model, build_optimizer  # noqa: PLC0415
    if cfg.tp == 1 and cfg.pp == 1:
        from .data_parallel import DataParallelStrategy  # noqa: PLC0415
        model = build_model(cfg, n_features=sizes[0], n_classes=sizes[-1])
        if cfg.device == "gpu":
            model.to("gpu")
        optimizer = build_optimizer(cfg, model.parameters())
        tracer = None
        if cfg.trace:
            from ..trace import Tracer  # noqa: PLC0415
            tracer = Tracer(comm.rank)
        return DataParallelStrategy(comm, model, optimizer, bucket_bytes=cfg.bucket_bytes,
                                    compress=cfg.compress, sync_every=cfg.sync_every,
                                    node_speeds=cfg.node_speeds, balance=cfg.balance,
                                    tracer=tracer, trace_path=cfg.trace)
    from .model_parallel_strategy import build_strategy as build_model_parallel  # noqa: PLC0415
    return build_model_parallel(comm, cfg, sizes)


def worker(comm, cfg: TrainConfig, arrays=None):
    """One rank's whole run; rank 0 returns the metrics dict, the others None."""
    from .. import backend  # noqa: PLC0415
    from ..train import N_CLASSES, fit, load_arrays  # noqa: PLC0415
    x_train, y_train, x_test, y_test = arrays if arrays is not None else load_arrays(cfg)
    cfg = dataclasses.replace(cfg, device=backend.resolve_device(requested_device(cfg)))
    if cfg.device == "gpu":  # the GPU of this worker's local rank; collectives staged via host
        from ..comm.device_staging import wrap_for_device  # noqa: PLC0415
        backend.set_gpu_for_local_rank(int(os.environ.get("LOCAL_RANK", comm.rank)))
        comm = wrap_for_device(comm, "gpu")
        x_train, y_train, x_test, y_test = (backend.to_device(a, "gpu")
                                            for a in (x_train, y_train, x_test, y_test))
    sizes = [x_train.shape[1], *cfg.hidden, N_CLASSES]
    strategy = build_strategy(comm, cfg, sizes)
    n_steps = cfg.epochs * math.ceil(len(y_train) / cfg.batch_size)

    def log(line: str) -> None:
        if strategy.is_main and cfg.verbose:
            if line.startswith("Epoch "):  # the epoch lines carry the traffic so far
                report = _comm_report(strategy, comm, n_steps, 1.0)
                line = f"{line} - {format_bytes(report['bytes_per_step'])}/step sent"
            print(line, flush=True)

    metrics = fit(strategy, x_train, y_train, x_test, y_test, cfg, log=log)
    train_seconds = sum(row["seconds"] for row in metrics["epochs"])
    metrics.update(_comm_report(strategy, comm, n_steps, train_seconds))
    metrics["backend"] = comm.backend_name
    if cfg.device == "gpu":  # device -> host -> device copies of the collectives
        metrics["staging"] = comm.staging.as_dict()
    if not strategy.is_main:
        return None
    if cfg.metrics_json:  # fit wrote it before the communication figures were known
        tmp = f"{cfg.metrics_json}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(json.dumps(metrics, indent=2) + "\n")
        os.replace(tmp, cfg.metrics_json)
    return metrics


def _direct_worker(comm, cfg: TrainConfig, arrays=None):
    if comm.world_size != cfg.world_size:
        raise ValueError(f"mpiexec started {comm.world_size} ranks but the run asks for "
                         f"{cfg.world_size} workers")
    return worker(comm, cfg, arrays)


def run(cfg: TrainConfig, arrays=None, timeout_s: float | None = None) -> dict:
    """Train ``cfg`` on ``cfg.world_size`` workers; rank 0's metrics dict.

    ``arrays`` = (x_train, y_train, x_test, y_test) skips loading the dataset in each worker.
    """
    cfg = normalise(cfg)
    from ..train import N_CLASSES, N_FEATURES  # noqa: PLC0415
    n_features = arrays[0].shape[1] if arrays is not None else N_FEATURES
    check(cfg, [n_features, *cfg.hidden, N_CLASSES])
    from ..cluster import mpi_launch  # noqa: PLC0415
    if mpi_launch.in_mpi_job():  # `mpiexec -n P minilepton train ...`: this process is a rank
        metrics = mpi_launch.run_direct(_direct_worker, (cfg, arrays))
        return metrics if metrics is not None else {}
    from .. import backend  # noqa: PLC0415
    from ..cluster import launch  # noqa: PLC0415
    from ..data import dataset_dir  # noqa: PLC0415
    if arrays is None:  # found (or downloaded) once, here: a missing data set stops us now
        directory = dataset_dir(cfg.dataset, cfg.data_dir)
        cfg = dataclasses.replace(cfg, data_dir=None if directory is None else str(directory))
    device = backend.resolve_device_in_launcher(requested_device(cfg))  # no CUDA here
    cfg = dataclasses.replace(cfg, device=device)
    kwargs = {"log_dir": cfg.log_dir} if cfg.log_dir else {}
    if cfg.blas_threads is not None:
        kwargs["blas_threads"] = cfg.blas_threads
    if device == "gpu":
        kwargs["start_method"] = backend.start_method_for(device)
    if cfg.link != "none":  # the launcher's simulated interconnect
        kwargs["link"] = cfg.link
    if cfg.node_speeds:  # the strategy slows its own compute (so balancing can measure it)
        kwargs["node_speeds"] = list(cfg.node_speeds)
    if timeout_s is not None:
        kwargs["timeout_s"] = timeout_s
    results = launch(worker, cfg.world_size, args=(cfg, arrays), backend=cfg.backend, **kwargs)
    return results[0]
