"""``minilepton train --workers P --device gpu``: data-parallel workers on a GPU, checked on a CPU.

The workers are spawned (as CUDA needs) and each installs the CuPy stand-in of ``test_device``
before anything asks for a GPU, so the whole path runs here: the device chosen per local rank,
parameters and buckets on the "GPU", each bucket's all-reduce staged through the shared-memory
arena (device -> host -> device) and counted. ``tests/test_gpu.py`` runs it on a real GPU.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest
from test_device import FakeGpuArray, Loopback, _make_fake_cupy, fake_cupy  # noqa: F401

import minilepton as ml
from minilepton import backend
from minilepton.engine import run as runner
from minilepton.engine.config import TrainConfig


def _arrays(n_train=96, n_test=40, features=12, classes=10, seed=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n_train, features)), rng.integers(0, classes, n_train),
            rng.standard_normal((n_test, features)), rng.integers(0, classes, n_test))


def _on_stand_in_gpu(comm, cfg, arrays):
    """runner.worker in a spawned process whose ``cupy`` is the stand-in (1 GPU)."""
    sys.modules["cupy"], sys.modules["cupyx"] = _make_fake_cupy(1)
    metrics = runner.worker(comm, cfg, arrays)
    return metrics, backend.gpu_initialised()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("optimizer, sync_every", [("sgd", 1), ("adam", 1), ("sgd", 2)],
                         ids=["sgd", "adam", "local-sgd"])
def test_data_parallel_workers_on_a_gpu_equal_the_cpu_run(tmp_path, optimizer, sync_every):
    arrays = _arrays()
    base = TrainConfig(hidden=(16,), epochs=2, batch_size=32, optimizer=optimizer, lr=0.05,
                       dtype="float64", seed=4, workers=2, dp=2, verbose=False, bucket_bytes=512,
                       sync_every=sync_every)
    cpu = dataclasses.replace(base, save=str(tmp_path / "cpu.npz"))
    gpu = dataclasses.replace(base, save=str(tmp_path / "gpu.npz"), device="gpu")
    cpu_metrics = runner.train(cpu, arrays)
    results = ml.cluster.launch(_on_stand_in_gpu, 2, args=(gpu, arrays), start_method="spawn")
    (gpu_metrics, initialised), (other, _) = results
    assert other is None and initialised  # only rank 0 reports; the GPU was in use
    with np.load(cpu.save) as want, np.load(gpu.save) as got:
        assert sorted(want.files) == sorted(got.files)
        for name in want.files:  # the same sums in the same order: the same bits
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert gpu_metrics["test_accuracy"] == cpu_metrics["test_accuracy"]
    assert "staging" not in cpu_metrics
    if sync_every > 1:  # parameters averaged every 2 steps and before each evaluation
        assert gpu_metrics["staging"]["h2d_copies"] > 0
        return
    staging = gpu_metrics["staging"]
    steps, n_params = 2 * (96 // 32), 12 * 16 + 16 + 16 * 10 + 10
    buckets = 4  # 512-byte buckets: each float64 weight alone, each bias alone
    # each step stages every bucket out and back; rank 0 also sent them out once (broadcast)
    assert staging["h2d_copies"] == steps * buckets
    assert staging["d2h_copies"] == (steps + 1) * buckets
    assert staging["d2h_bytes"] == (steps + 1) * n_params * 8


def test_gpu_layouts_that_run_only_on_the_cpu_fail_before_any_worker():
    cfg = TrainConfig(device="gpu", tp=2, workers=2, hidden=(16,))
    with pytest.raises(ValueError, match="use --device cpu with --tp/--pp"):
        runner.train(cfg, _arrays())
    cfg = TrainConfig(device="gpu", workers=2, compress="fp16", hidden=(16,))
    with pytest.raises(ValueError, match="--compress runs on the CPU"):
        runner.train(cfg, _arrays())
    # auto keeps such layouts on the CPU without asking for a GPU
    assert runner.requested_device(dataclasses.replace(cfg, device="auto")) == "cpu"


@pytest.mark.timeout(60)
def test_gpu_workers_without_a_gpu_fail_with_one_line(monkeypatch):
    monkeypatch.setattr(backend, "probe_gpu_count", lambda *a, **k: (0, "no CuPy here"))
    cfg = TrainConfig(device="gpu", workers=2, hidden=(16,))
    with pytest.raises(backend.DeviceError, match="no usable GPU") as info:
        runner.train(cfg, _arrays())
    assert "\n" not in str(info.value)


def test_data_parallel_on_gpu_parameters_needs_a_staged_communicator(fake_cupy):  # noqa: F811
    model = ml.nn.mlp([4, 3], seed=0, dtype="float64").to("gpu")
    with pytest.raises(TypeError, match="wrap_for_device"):
        ml.parallel.DataParallel(model, Loopback())
    from minilepton.comm.device_staging import wrap_for_device
    from minilepton.parallel.overlap import OverlappedDataParallel
    with pytest.raises(ValueError, match="overlap runs on the CPU"):
        OverlappedDataParallel(model, wrap_for_device(Loopback(), "gpu"), broadcast=False)
    dp = ml.parallel.DataParallel(model, wrap_for_device(Loopback(), "gpu"), broadcast=False)
    assert all(isinstance(b.buffer, FakeGpuArray) for b in dp.buckets)
    assert all(p.grad is v for b in dp.buckets for p, v in zip(b.params, b.views))
