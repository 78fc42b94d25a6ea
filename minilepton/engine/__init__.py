"""The engine: what a ``TrainConfig`` becomes, and the one loop that trains it.

- ``config``: ``TrainConfig``, every ``minilepton train`` flag as a validated field.
- ``recipe``: model, optimizer, loss, data arrays and the strategy, from a config.
- ``loop``: ``fit``, the training loop; ``hooks``: what it does around the steps.
- ``run``: ``train(cfg)``, one entry for 1 or P workers, on shm, MPI or inside mpiexec.
- ``checkpoint``, ``trace``, ``files``: what a run writes.

Only the engine knows the config, the data, the cluster, checkpoints and traces; the layers
below it (``parallel``, ``comm``, ``nn``, ``autograd``) never import it.
"""

from __future__ import annotations

from .config import TrainConfig
from .loop import NonFiniteLossError, fit
from .run import train

__all__ = ["NonFiniteLossError", "TrainConfig", "fit", "train"]
