"""Memory techniques on a GPU (CuPy): fp16 runs natively there, recomputation and gradient
accumulation are device-blind. Run with ``pytest -m gpu``; skipped without CuPy and a GPU
(failing instead under ``MINILEPTON_REQUIRE_GPU=1``, as ``benchmarks/gpu_check.sh`` sets).

- fp16 on the GPU (cuBLAS products, float32 accumulation) ends near the CPU's emulated fp16 and
  near float32, in one process and with two data-parallel workers on one GPU;
- recomputation changes no bit on the GPU either; the tracker counts GPU arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

from minilepton.engine import run as runner
from minilepton.engine.config import TrainConfig

pytestmark = pytest.mark.gpu


def _arrays(n=512, features=20, classes=4, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, :classes].argmax(axis=1)).astype(np.int64)
    return x, y, x[:128].copy(), y[:128].copy()


def _run(tmp_path, name, **kw):
    cfg = TrainConfig(hidden=(32, 32), epochs=2, batch_size=64, optimizer="sgd", lr=0.1,
                      momentum=0.9, seed=5, verbose=False, save=str(tmp_path / f"{name}.npz"),
                      **kw)
    metrics = runner.train(cfg, _arrays(), timeout_s=240)
    with np.load(cfg.save) as saved:
        return metrics, {k: saved[k] for k in saved.files}


def _close(a, b, rtol):
    for k in b:
        assert np.linalg.norm(a[k] - b[k]) <= rtol * np.linalg.norm(b[k]), k


@pytest.mark.timeout(300)
def test_fp16_on_the_gpu_is_close_to_the_cpu_and_to_float32(cp, tmp_path):
    fp32, ref = _run(tmp_path, "fp32", device="cpu")
    cpu_m, cpu = _run(tmp_path, "cpu16", device="cpu", precision="fp16")
    gpu_m, gpu = _run(tmp_path, "gpu16", device="gpu", precision="fp16")
    dp_m, dp = _run(tmp_path, "dp16", device="gpu", precision="fp16", workers=2)
    _close(gpu, cpu, 0.02)
    _close(dp, gpu, 0.02)
    _close(gpu, ref, 0.05)
    for m in (gpu_m, dp_m):
        assert m["memory"]["parameters_bytes"] == cpu_m["memory"]["parameters_bytes"]
        assert m["memory"]["optimizer_bytes"] == cpu_m["memory"]["optimizer_bytes"]
        assert abs(m["test_accuracy"] - fp32["test_accuracy"]) < 0.05


@pytest.mark.timeout(300)
def test_recomputation_and_accumulation_on_the_gpu(cp, tmp_path):
    _, plain = _run(tmp_path, "plain", device="gpu", dtype="float64")
    _, again = _run(tmp_path, "again", device="gpu", dtype="float64", recompute=True)
    _, accum = _run(tmp_path, "accum", device="gpu", dtype="float64", grad_accum=4)
    assert all(np.array_equal(plain[k], again[k]) for k in plain)
    _close(accum, plain, 1e-12)
