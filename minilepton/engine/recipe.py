"""The recipe of a run: what a ``TrainConfig`` turns into on each rank.

Model (the MLP ``n_features``-hidden…-``n_classes``, seeded), optimizer (Adam or SGD), loss
(summed softmax cross-entropy: the strategy divides by the global batch), the data arrays, and
the strategy that composes them over the rank grid ``Mesh(comm, dp, tp, pp)``. Every rank builds
the same seeded serial model and keeps its part, so no weights are ever sent at start-up.
"""

from __future__ import annotations

import numpy as np

from .. import nn, optim
from ..cluster import simulate
from ..data import load_dataset, to_float
from ..parallel.balance import make_balancer
from ..parallel.mesh import Mesh
from ..parallel.stats import sum_cross_entropy
from ..parallel.strategy import ParallelStrategy
from .config import TrainConfig

N_FEATURES, N_CLASSES = 784, 10  # 28×28 images, 10 classes (MNIST and Fashion-MNIST)


def build_model(cfg: TrainConfig, n_features: int = N_FEATURES, n_classes: int = N_CLASSES):
    """The MLP ``n_features``-hidden…-``n_classes`` with ReLU, seeded by ``cfg.seed``."""
    return nn.mlp([n_features, *cfg.hidden, n_classes], seed=cfg.seed, dtype=cfg.dtype)


def build_optimizer(cfg: TrainConfig, params):
    """``Adam(lr)`` or ``SGD(lr, momentum, weight_decay)`` over ``params``."""
    if cfg.optimizer == "adam":
        return optim.Adam(params, lr=cfg.lr)
    return optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def build_loss(cfg: TrainConfig):
    """The summed training loss ℓ(logits, labels) every strategy differentiates (÷ B_global)."""
    return sum_cross_entropy


def load_arrays(cfg: TrainConfig):
    """``(x_train, y_train, x_test, y_test)``: images as (N, 784) floats in [0, 1], int64 labels."""
    (x_train, y_train), (x_test, y_test) = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
    return (to_float(x_train, cfg.dtype), np.asarray(y_train, dtype=np.int64),
            to_float(x_test, cfg.dtype), np.asarray(y_test, dtype=np.int64))


def build_strategy(comm, cfg: TrainConfig, n_features: int = N_FEATURES, tracer=None):
    """This rank's ``ParallelStrategy`` for ``cfg`` over ``comm`` (any world size, 1 included)."""
    model = build_model(cfg, n_features, N_CLASSES)
    if cfg.device == "gpu":
        model.to("gpu")
    speeds = simulate.node_speeds()  # the launcher's simulated cluster, when it set one
    return ParallelStrategy(
        Mesh(comm, cfg.dp, cfg.tp, cfg.pp), model, lambda params: build_optimizer(cfg, params),
        loss_fn=build_loss(cfg), micro_batches=cfg.micro_batches, schedule=cfg.schedule,
        bucket_bytes=cfg.bucket_bytes, compress=cfg.compress, overlap=cfg.overlap,
        sync_every=cfg.sync_every,
        balancer=make_balancer(cfg.balance, cfg.dp, cfg.node_speeds),
        slow_down=simulate.slow_down if speeds else None, tracer=tracer, zero=cfg.zero,
        recompute=cfg.recompute, precision=cfg.precision, grad_accum=cfg.grad_accum)
