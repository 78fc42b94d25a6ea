"""Parallel strategies, one idea per file.

- ``data_parallel``: replicate the model, shard the batch, average gradients (all-reduce).
- ``sampler``: which samples of each global batch a data-parallel rank computes.
- ``tensor_parallel``: shard a layer's weight matrix across ranks (column / row parallel).
- ``schedules``: pipeline schedules (GPipe, 1F1B) as pure, printable functions.
- ``pipeline``: a ``Sequential`` cut into stages over ranks, micro-batches sent between them.
- ``mesh``: the explicit rank grid dp × tp × pp and each rank's sub-communicators.
- ``strategy``: ``ParallelStrategy``, tensor → pipeline → data composed over one mesh.
- ``stats``: the summed loss and the statistics every strategy reports.
- opt-in extras, one file each: ``overlap``, ``compression``, ``local_sgd``, ``balance``.
- memory, one file each: ``zero`` (ZeRO stages 1-3), ``recompute``, ``precision`` (and
  ``masters``, the full-precision weights the optimizer steps), ``memory`` (bytes per rank).
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it (loaded on first use)
_EXPORTS = {
    "DataParallel": "data_parallel",
    "DistributedSampler": "sampler",
    "ColumnParallelLinear": "tensor_parallel",
    "RowParallelLinear": "tensor_parallel",
    "PipelineParallel": "pipeline",
    "gpipe": "schedules",
    "one_f_one_b": "schedules",
    "Mesh": "mesh",
    "OverlappedDataParallel": "overlap",
    "LocalSGD": "local_sgd",
    "ZeroDataParallel": "zero",
    "ParallelStrategy": "strategy",
    "SingleProcess": "strategy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError:
        raise AttributeError(f"module 'minilepton.parallel' has no attribute {name!r}") from None
