"""``TrainConfig``: every ``minilepton train`` flag as one validated dataclass.

The CLI builds one from its arguments, the notebooks build one by hand, and the parallel runner
ships it to every worker. Bad values raise ``ValueError`` with one line that names the flag.
Defaults reproduce the article's §5 model: an MLP 784-128-10 trained with Adam (lr 1e-3),
batch 32, for 5 epochs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..backend import DEVICES
from ..cluster.faults import parse_fault
from ..cluster.launcher import BACKENDS
from ..cluster.simulate import PROFILES, check_node_speeds, link_model
from ..data import DATASETS
from ..parallel.balance import BALANCE_MODES as BALANCES
from ..parallel.compression import parse_compress
from ..parallel.precision import PRECISIONS
from ..parallel.schedules import SCHEDULES as _SCHEDULE_FUNCTIONS

# Choice lists: each comes from the module that implements the choices; these two are the recipe's.
OPTIMIZERS = ("adam", "sgd")
DTYPES = ("float32", "float64")
SCHEDULES = tuple(_SCHEDULE_FUNCTIONS)
LINKS = ("none", *PROFILES)  # or "LATENCY_US,BANDWIDTH_GBPS"

__all__ = ["BACKENDS", "BALANCES", "DATASETS", "DEVICES", "DTYPES", "LINKS", "OPTIMIZERS",
           "PRECISIONS", "SCHEDULES", "TrainConfig", "parse_compress"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parse_node_speeds(spec) -> tuple[float, ...] | None:
    """``"1,1,0.5,1"`` (or a sequence) -> a tuple of positive speed factors; None stays None."""
    try:
        speeds = check_node_speeds(spec)
    except ValueError as exc:
        raise ValueError(f"--node-speeds: {exc}") from None
    return None if speeds is None else tuple(speeds)


@dataclass
class TrainConfig:
    """One training run. ``world_size`` > 1 means the parallel runner takes it."""

    # data and model
    dataset: str = "default"
    data_dir: str | None = None
    hidden: tuple[int, ...] = (128,)
    dtype: str = "float32"
    device: str = "cpu"
    # optimisation
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    # outputs
    metrics_json: str | None = None
    save: str | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    debug: bool = False
    verbose: bool = True
    # parallelism (see minilepton.parallel)
    workers: int | None = None
    dp: int = 1
    tp: int = 1
    pp: int = 1
    micro_batches: int = 4
    schedule: str = "gpipe"
    backend: str = "shm"
    trace: str | None = None
    log_dir: str | None = None
    bucket_bytes: int = 1 << 20
    sync_every: int = 1
    overlap: bool = False
    compress: str = "none"
    node_speeds: tuple[float, ...] | None = None
    balance: str = "none"
    link: str = "none"
    blas_threads: int | None = None
    # memory (see minilepton.parallel)
    zero: int = 0
    recompute: bool = False
    precision: str = "fp32"
    grad_accum: int = 1
    memory_report: bool = False
    # fault tolerance (see minilepton.engine.run and minilepton.cluster.faults)
    max_restarts: int = 0
    checkpoint_every: int | None = None
    min_workers: int | None = None
    fault: tuple[str, ...] = ()

    def __post_init__(self):
        self.hidden = tuple(self.hidden) if not isinstance(self.hidden, int) else (self.hidden,)
        self.node_speeds = parse_node_speeds(self.node_speeds)
        self.fault = (self.fault,) if isinstance(self.fault, str) else tuple(self.fault or ())
        self.validate()

    @property
    def world_size(self) -> int:
        """Worker processes: ``--workers`` if given, else dp × tp × pp."""
        return self.workers if self.workers is not None else self.dp * self.tp * self.pp

    def validate(self) -> None:
        """Raise ``ValueError`` with one line naming the first bad setting."""
        choices = {"dataset": DATASETS, "optimizer": OPTIMIZERS, "dtype": DTYPES,
                   "device": DEVICES, "schedule": SCHEDULES, "backend": BACKENDS,
                   "balance": BALANCES, "precision": PRECISIONS}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{_flag(name)} must be one of {', '.join(allowed)}, "
                                 f"not {value!r}")
        for name in ("epochs", "batch_size", "dp", "tp", "pp", "micro_batches", "sync_every",
                     "bucket_bytes", "grad_accum"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{_flag(name)} must be a positive integer, not {value!r}")
        for name in ("workers", "blas_threads", "checkpoint_every", "min_workers"):  # optional
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value <= 0):
                raise ValueError(f"{_flag(name)} must be a positive integer, not {value!r}")
        for size in self.hidden:
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"--hidden sizes must be positive integers, not {size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, not {self.lr!r}")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{_flag(name)} must be a non-negative number, not {value!r}")
        if self.momentum >= 1:
            raise ValueError(f"--momentum must be below 1, not {self.momentum!r}")
        if self.optimizer == "adam" and (self.momentum or self.weight_decay):
            raise ValueError("--momentum and --weight-decay apply to --optimizer sgd only")
        parse_compress(self.compress)
        for spec in self.fault:
            parse_fault(spec)
        if isinstance(self.max_restarts, bool) or not isinstance(self.max_restarts, int) \
                or self.max_restarts < 0:
            raise ValueError(f"--max-restarts must be an integer >= 0, not {self.max_restarts!r}")
        if self.min_workers is not None and self.min_workers > self.world_size:
            raise ValueError(f"--min-workers {self.min_workers} is more than the "
                             f"{self.world_size} workers")
        if self.zero not in (0, 1, 2, 3) or isinstance(self.zero, bool):
            raise ValueError(f"--zero must be 0, 1, 2 or 3, not {self.zero!r}")
        if self.link != "none":
            try:
                link_model(self.link)
            except ValueError as exc:
                raise ValueError(f"--link: {exc}") from None
        layout = self.dp * self.tp * self.pp
        if self.workers is not None and layout != 1 and layout != self.workers:
            raise ValueError(f"--workers {self.workers} does not match --dp {self.dp} × --tp "
                             f"{self.tp} × --pp {self.pp} = {layout}")
        if self.node_speeds is not None and len(self.node_speeds) != self.world_size:
            raise ValueError(f"--node-speeds lists {len(self.node_speeds)} speeds for "
                             f"{self.world_size} workers")
        if self.resume and not self.checkpoint_dir:
            raise ValueError("--resume needs --checkpoint-dir DIR (where to find the checkpoint)")

    def as_dict(self) -> dict:
        """Plain JSON-able values (tuples become lists), as written into the metrics JSON."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        out["node_speeds"] = list(self.node_speeds) if self.node_speeds else None
        return out

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Inverse of ``as_dict``; unknown keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(unknown)}")
        return cls(**values)
