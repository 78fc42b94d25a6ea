"""A layout: how a training step is cut over devices, as plain values the cost model reads.

``Layout.from_config(cfg, ...)`` reads any object with the attributes of ``minilepton train``'s
configuration (``dp``, ``tp``, ``pp``, ``workers``, ``batch_size``, ``micro_batches``,
``schedule``, ``zero``, ``recompute``, ``precision``, ``grad_accum``, ``dtype``,
``optimizer``, ``momentum``, ``bucket_bytes``, ``node_speeds``, ``balance``, ``sync_every``,
``compress``, ``blas_threads``), so the cost model never imports the engine.

A *step* is one global batch of ``batch_size`` samples and one optimizer update. Each of the
dp replicas takes ``batch_size / dp`` of it, in ``grad_accum`` passes (micro-steps whose
gradients add up before the update, as the code's ``--grad-accum`` does); each pass is cut into
``micro_batches`` micro-batches that flow through the pp stages.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..parallel.schedules import SCHEDULES  # the schedules the code runs, by name


@dataclass(frozen=True)
class Layout:
    dp: int = 1
    tp: int = 1
    pp: int = 1
    batch_size: int = 32
    micro_batches: int = 1
    grad_accum: int = 1
    schedule: str = "gpipe"
    virtual_stages: int = 1
    zero: int = 0
    recompute: bool = False
    precision: str = "fp32"
    dtype: str = "float32"
    optimizer: str = "adam"
    momentum: bool = False
    bucket_bytes: int = 1 << 20
    overlap: bool = False
    node_speeds: tuple | None = None
    balance: str = "none"
    sync_every: int = 1
    compress: str = "none"
    blas_threads: int | None = None

    @property
    def world(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def micro_batch_size(self) -> float:
        """Samples per micro-batch on one pipeline."""
        return self.batch_size / (self.dp * self.grad_accum * self.micro_batches)

    @property
    def samples_per_step(self) -> int:
        return self.batch_size

    @property
    def compute_dtype(self) -> str:
        """The precision the products run in: bf16/fp16, or the parameters' dtype."""
        return self.precision if self.precision != "fp32" else self.dtype

    def with_(self, **changes) -> Layout:
        return replace(self, **changes)

    def check(self) -> Layout:
        """Raise ValueError (one line) unless the layout can run."""
        for name in ("dp", "tp", "pp", "batch_size", "micro_batches", "grad_accum",
                     "virtual_stages", "sync_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, "
                                 f"not {value!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown pipeline schedule {self.schedule!r}")
        if self.zero not in (0, 1, 2, 3):
            raise ValueError(f"--zero must be 0, 1, 2 or 3, not {self.zero!r}")
        if self.batch_size % self.dp:
            raise ValueError(f"--batch-size {self.batch_size} does not split over --dp {self.dp}")
        share = self.batch_size // self.dp
        if share % self.grad_accum:
            raise ValueError(f"--grad-accum {self.grad_accum} does not divide the {share} "
                             f"samples of each replica")
        if (share // self.grad_accum) % self.micro_batches:
            raise ValueError(f"{self.micro_batches} micro-batches do not divide the "
                             f"{share // self.grad_accum} samples of each pipeline pass")
        if self.node_speeds is not None and len(self.node_speeds) != self.world:
            raise ValueError(f"--node-speeds lists {len(self.node_speeds)} speeds for "
                             f"{self.world} devices")
        return self

    @classmethod
    def from_config(cls, cfg, micro_batch_size: int | None = None, virtual_stages: int = 1,
                    overlap: bool = False) -> Layout:
        """The layout of a training configuration (read by attribute). With
        ``micro_batch_size`` the micro-batch count is batch / (dp · micro_batch_size) (the GPT
        convention); otherwise ``micro_batches`` when pp > 1, else 1 (as the code runs)."""
        dp, tp, pp = int(cfg.dp), int(getattr(cfg, "tp", 1)), int(getattr(cfg, "pp", 1))
        workers = getattr(cfg, "workers", None)
        if workers is not None and workers > 1 and dp * tp * pp == 1:
            dp = int(workers)  # --workers P alone means data parallel
        batch = int(cfg.batch_size)
        accum = int(getattr(cfg, "grad_accum", 1))
        if micro_batch_size:
            per_pass = batch / (dp * accum)
            if per_pass != int(per_pass) or per_pass % micro_batch_size:
                raise ValueError(f"--micro-batch-size {micro_batch_size} does not divide the "
                                 f"{per_pass:g} samples of each replica's pass")
            micro = int(per_pass // micro_batch_size)
        else:
            micro = int(getattr(cfg, "micro_batches", 1)) if pp > 1 else 1
        speeds = getattr(cfg, "node_speeds", None)
        return cls(dp=dp, tp=tp, pp=pp, batch_size=batch, micro_batches=micro,
                   grad_accum=accum,
                   schedule=getattr(cfg, "schedule", "gpipe"), virtual_stages=int(virtual_stages),
                   zero=int(getattr(cfg, "zero", 0)), recompute=bool(getattr(cfg, "recompute", False)),
                   precision=getattr(cfg, "precision", "fp32"),
                   dtype=getattr(cfg, "dtype", "float32"), optimizer=getattr(cfg, "optimizer", "adam"),
                   momentum=bool(getattr(cfg, "momentum", 0.0)),
                   bucket_bytes=int(getattr(cfg, "bucket_bytes", 1 << 20)), overlap=bool(overlap),
                   node_speeds=tuple(speeds) if speeds else None,
                   balance=getattr(cfg, "balance", "none"),
                   sync_every=int(getattr(cfg, "sync_every", 1)),
                   compress=getattr(cfg, "compress", "none"),
                   blas_threads=getattr(cfg, "blas_threads", None)).check()
