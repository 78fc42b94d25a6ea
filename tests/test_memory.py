"""Memory accounting and the memory flags end to end: formulas, metrics, checkpoints, errors.

The tracker's figures for parameters, gradients and optimizer state are compared byte for byte
with the formulas (the ZeRO paper's 16 bytes per parameter with Adam and 16-bit compute);
activation peaks as ratios (recomputation, precision, accumulation). Runs with ZeRO, mixed
precision and recomputation resume bitwise from their checkpoints, on any layout.
"""

import itertools
import json
import shutil

import numpy as np
import pytest

import minilepton as ml
from minilepton.cli import main
from minilepton.comm.local import LocalComm
from minilepton.engine.config import TrainConfig
from minilepton.engine.run import train
from minilepton.parallel.memory import KINDS, held_bytes, predict, predict_activations
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.strategy import ParallelStrategy


def one_process(sizes=(20, 32, 32, 32, 10), rows=16, steps=2, optimizer="adam", **memory):
    """A ParallelStrategy on one process after ``steps`` steps of ``rows`` samples."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], rows)
    model = ml.nn.mlp(sizes, seed=0)
    make = ((lambda ps: ml.optim.Adam(ps, lr=1e-3)) if optimizer == "adam"
            else (lambda ps: ml.optim.SGD(ps, lr=0.1)))
    strategy = ParallelStrategy(Mesh(LocalComm()), model, make, **memory)
    for _ in range(steps):
        strategy.train_step(x, y, rows)
    return strategy


def n_params(sizes) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def test_bytes_per_parameter_are_the_zero_papers():
    """Adam: 4 + 4 + 8 bytes per parameter in float32; 2 + 2 + (4 + 8) with 16-bit compute
    (master weights and moments in float32): 16 either way, before activations."""
    psi = n_params((20, 32, 32, 32, 10))
    for precision, (p, g, o) in {"fp32": (4, 4, 8), "bf16": (2, 2, 12),
                                 "fp16": (2, 2, 12)}.items():
        m = one_process(precision=precision).memory_bytes()
        assert (m["parameters_bytes"], m["gradients_bytes"], m["optimizer_bytes"]) == \
            (p * psi, g * psi, o * psi)
    assert one_process(optimizer="sgd").memory_bytes()["optimizer_bytes"] == 0


@pytest.mark.parametrize("memory", [{}, {"precision": "bf16"}, {"recompute": True},
                                    {"grad_accum": 4}, {"zero": 3, "precision": "fp16"},
                                    {"zero": 2, "recompute": True, "grad_accum": 2}])
def test_measured_bytes_equal_the_formulas(memory):
    strategy = one_process(**memory)
    assert strategy.memory_bytes() == strategy.memory_predicted()


def test_activation_peaks_as_ratios():
    sizes = (20, 64, 64, 64, 64, 10)
    plain = one_process(sizes).memory_bytes()["activations_peak_bytes"]
    ratios = {name: one_process(sizes, **kw).memory_bytes()["activations_peak_bytes"] / plain
              for name, kw in {"recompute": {"recompute": True}, "bf16": {"precision": "bf16"},
                               "accum4": {"grad_accum": 4}}.items()}
    expected = predict_activations(sizes, 16, 4, recompute=True) / \
        predict_activations(sizes, 16, 4)
    assert ratios["recompute"] == pytest.approx(expected) and ratios["recompute"] < 0.8
    assert ratios["bf16"] == pytest.approx(0.5, abs=0.02)  # + the float32 logits for the loss
    assert ratios["accum4"] == pytest.approx(0.25)


def test_held_bytes_count_shared_memory_once():
    flat = np.zeros(100)
    views = [flat[:40], flat[50:], flat[60:70]]  # 90 of the 100 values, one counted twice
    other = np.zeros(10)
    got = held_bytes({"parameters": views, "gradients": [flat, other], "buffers": [other]})
    assert got == {"parameters": 720, "gradients": 160, "optimizer": 0, "buffers": 0}


def test_predicted_stages_divide_by_p():
    """Groups of 1000, 10 and 4000 over P = 4: blocks of 250, 3 and 1000 (10 padded to 12)."""
    sizes, P = [1000, 10, 4000], 4
    assert predict(sizes, P, 0, 4, 4, 2, False)["optimizer_bytes"] == 8 * 5010
    for stage in (1, 2, 3):
        got = predict(sizes, P, stage, 4, 4, 2, False)
        assert got["optimizer_bytes"] == 8 * 1253
        assert got["gradients_bytes"] == 4 * (1253 if stage >= 2 else 5012)
    assert predict(sizes, P, 3, 4, 4, 2, False)["parameters_bytes"] == 4 * (1253 + 4000)
    assert predict(sizes, P, 2, 2, 4, 2, True)["buffers_bytes"] == 2 * 4000 + 4 * 1000


# ---------------------------------------------------------------- the engine
@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return (rng.random((96, 12)), rng.integers(0, 10, 96), rng.random((20, 12)),
            rng.integers(0, 10, 20))


def quiet(**kw):
    return TrainConfig(hidden=(16, 16), batch_size=16, verbose=False, **kw)


@pytest.mark.timeout(120)
def test_metrics_hold_memory_by_kind_for_every_rank(arrays, tmp_path):
    metrics = train(quiet(epochs=1, workers=2, zero=2, precision="fp16",
                          metrics_json=str(tmp_path / "m.json")), arrays, 60)
    saved = json.loads((tmp_path / "m.json").read_text())
    assert sorted(saved["memory"]) == sorted(KINDS)
    assert len(saved["memory_per_rank"]) == 2 and saved["memory_per_rank"][0] == saved["memory"]
    assert saved["memory_predicted"]["optimizer_bytes"] == saved["memory"]["optimizer_bytes"]
    assert metrics["skipped_steps"] >= 0 and metrics["loss_scale"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("memory", [{"zero": 2, "precision": "bf16", "workers": 2},
                                    {"zero": 3, "recompute": True, "grad_accum": 2,
                                     "workers": 2, "dtype": "float64"},
                                    {"zero": 1, "tp": 2, "pp": 2, "micro_batches": 2,
                                     "dtype": "float64"}])
def test_memory_runs_resume_bitwise_and_on_another_layout(arrays, tmp_path, memory):
    """1 epoch + resume = 2 epochs straight; and the checkpoint loads into one plain process,
    whose saved parameters are the run's (the full-precision masters)."""
    straight, one = str(tmp_path / "straight.npz"), str(tmp_path / "one.npz")
    train(quiet(epochs=2, save=straight, **memory), arrays, 60)
    ck = tmp_path / "ck"
    first = train(quiet(epochs=1, checkpoint_dir=str(ck), save=one, **memory), arrays, 60)
    shutil.copytree(ck, tmp_path / "ck_copy")
    resumed = train(quiet(epochs=2, checkpoint_dir=str(ck), resume=True,
                          save=str(tmp_path / "r.npz"), **memory), arrays, 60)
    assert resumed["epochs"][0] == first["epochs"][0]  # carried by the checkpoint, timings too
    a, b = np.load(straight), np.load(tmp_path / "r.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    again = train(quiet(epochs=1, checkpoint_dir=str(tmp_path / "ck_copy"), resume=True,
                        dtype=memory.get("dtype", "float32"), save=str(tmp_path / "plain.npz")),
                  arrays)
    assert again["epochs"] == first["epochs"]  # nothing left to train
    a, b = np.load(one), np.load(tmp_path / "plain.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, message", [
    (["--zero", "2", "--pp", "2"], "--zero 2 and 3"),
    (["--zero", "1", "--workers", "2", "--sync-every", "4"], "local SGD"),
    (["--zero", "1", "--workers", "2", "--compress", "fp16"], "reduce-scatters instead"),
    (["--precision", "bf16", "--compress", "topk:0.1", "--workers", "2"], "16-bit already"),
    (["--precision", "bf16", "--device", "gpu"], "CuPy arrays cannot hold"),
    (["--precision", "fp16", "--workers", "2", "--sync-every", "2"], "float32 masters"),
    (["--grad-accum", "64", "--workers", "2"], "more micro-steps than samples"),
])
def test_impossible_memory_combinations_are_one_line(flags, message, capsys):
    assert main(["train", "--epochs", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_memory_report_prints_the_table(capsys, monkeypatch):
    assert main(["train", "--epochs", "1", "--quiet", "--memory-report", "--grad-accum", "2",
                 "--hidden", "8"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "rank 0" in out and "predicted" in out
