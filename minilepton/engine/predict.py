"""``minilepton simulate``: a training configuration becomes its predicted step (no workers).

The engine is the layer that knows the configuration, the data and the cluster, so it turns
them into the cost model's plain inputs:

- the **model**: the MLP ``n_features``-``hidden``…-10 of ``--dataset`` (its feature count and
  sample count are read from the data's headers, not loaded), or a GPT from ``--model gpt``;
- the **layout**: ``sim.Layout.from_config(cfg)``, after ``--workers P`` alone became ``--dp P``;
- the **hardware**: a built-in profile or a JSON file (``--hardware``), or this machine's
  measured profile from the cache (calibrated on first use), with ``--link`` (the simulated
  link between workers, or the link between nodes of a built-in profile), ``--network`` and
  ``--gpus-per-node``.

``simulate(cfg, options)`` returns the prediction (or, with ``options.search``, the ranked
layouts) as a dict; ``sim.report`` turns either into text.
"""

from __future__ import annotations

import dataclasses
import gzip
import struct

from .. import sim
from ..cluster.simulate import link_model
from ..data import dataset_dir, load_default
from ..data.sources import SPLIT_STEMS, find_file
from ..sim.search import search as search_layouts
from .calibrate import load_or_calibrate
from .config import TrainConfig
from .recipe import N_CLASSES
from .run import normalise

STANDARD_TRAIN = (60000, 28 * 28)  # MNIST and Fashion-MNIST: 60,000 training images, 28×28


def dataset_shape(cfg: TrainConfig) -> tuple[int, int]:
    """(training samples, features per sample) of ``cfg.dataset``: the embedded subset's arrays,
    or the header of the training images' IDX file (never downloaded: when the files are not
    here, the standard 60,000 × 784 of MNIST and Fashion-MNIST)."""
    if cfg.dataset == "default":
        (x, _), _ = load_default()
        return len(x), int(x[0].size)
    try:
        directory = dataset_dir(cfg.dataset, cfg.data_dir, download=False)
    except (OSError, ValueError):
        return STANDARD_TRAIN
    path = find_file(directory, SPLIT_STEMS["train"][0]) if directory else None
    if path is None:
        return STANDARD_TRAIN
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(16)
    if len(header) < 16:
        return STANDARD_TRAIN
    count, rows, cols = struct.unpack(">III", header[4:16])
    return int(count), int(rows * cols)


def workload(cfg: TrainConfig, options):
    """The model a configuration (and the simulate options) describes."""
    if getattr(options, "model", "mlp") == "gpt":
        return sim.gpt(options.layers, options.hidden_size, options.heads, options.seq_len,
                       options.vocab, flash_attention=bool(getattr(options, "flash_attention",
                                                                   False)))
    _, features = dataset_shape(cfg)
    return sim.mlp([features, *cfg.hidden, N_CLASSES])


def hardware(cfg: TrainConfig, options, log=print):
    """The ``sim.Hardware`` of ``--hardware`` (default: this machine, measured)."""
    spec = getattr(options, "hardware", None) or "this-machine"
    link = None
    if cfg.link != "none":  # the simulated cluster's link (a profile name or LATENCY_US,GBPS)
        model = link_model(cfg.link)
        link = {"name": cfg.link, "latency_us": model.latency_us,
                "bandwidth_gbps": model.bandwidth_gbps}
    if spec == "this-machine":
        profile, _ = load_or_calibrate(log=log)
        return sim.hardware(profile, backend=cfg.backend, link_spec=link)
    network = getattr(options, "network", None)
    return sim.hardware(spec, devices_per_node=getattr(options, "gpus_per_node", None),
                        inter=network, backend=cfg.backend, link_spec=link)


def layout(cfg: TrainConfig, options) -> sim.Layout:
    return sim.Layout.from_config(normalise(cfg), getattr(options, "micro_batch_size", None),
                                  getattr(options, "virtual_stages", 1) or 1,
                                  bool(getattr(options, "overlap", False)))


def simulate(cfg: TrainConfig, options, log=print) -> dict:
    """The prediction for ``cfg`` (or with ``options.search`` the ranked layouts)."""
    model = workload(cfg, options)
    hw = hardware(cfg, options, log=log)
    if getattr(options, "search", False):  # the layout is searched: only its settings count
        devices = cfg.workers or cfg.dp * cfg.tp * cfg.pp
        one = dataclasses.replace(cfg, workers=None, dp=1, tp=1, pp=1, node_speeds=None)
        base = sim.Layout.from_config(one, None, getattr(options, "virtual_stages", 1) or 1,
                                      bool(getattr(options, "overlap", False)))
        out = search_layouts(model, devices, hw, base)
        out["kind"] = "search"
        return out
    base = layout(cfg, options)
    out = sim.predict(model, base, hw)
    samples, _ = dataset_shape(cfg) if model.kind == "mlp" else (None, None)
    if samples:
        steps = -(-samples // base.samples_per_step)
        out["epoch_seconds"] = steps * out["step_seconds"]
    out["kind"] = "prediction"
    out["config"] = {k: v for k, v in dataclasses.asdict(cfg).items()
                     if k in ("dataset", "hidden", "batch_size", "optimizer", "dtype", "backend",
                              "link", "node_speeds", "balance", "compress", "sync_every")}
    return out
