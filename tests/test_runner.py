"""``minilepton train --workers P``: the parallel runner trains the single-process model."""

import json

import numpy as np
import pytest

import minilepton as ml
from minilepton.engine import run as runner
from minilepton.engine.config import TrainConfig
from minilepton.engine.run import train


@pytest.fixture(scope="module")
def arrays():
    (x, y), (xt, yt) = ml.data.load_dataset("default")
    return (ml.data.to_float(x[:1200]), y[:1200].astype(np.int64),
            ml.data.to_float(xt[:500]), yt[:500].astype(np.int64))


def small(**kw):
    base = {"hidden": (16,), "epochs": 2, "batch_size": 64, "seed": 3, "verbose": True}
    return TrainConfig(**{**base, **kw})


def test_workers_alone_means_data_parallel_and_bad_layouts_fail_early():
    assert runner.normalise(TrainConfig(workers=4)).dp == 4
    assert runner.normalise(TrainConfig(workers=4, dp=2, tp=2)).dp == 2
    with pytest.raises(ValueError, match="CPU"):  # data parallel on GPUs: uncompressed only
        runner.check(runner.normalise(TrainConfig(workers=2, device="gpu", compress="fp16")))
    with pytest.raises(ValueError, match="sync-every"):
        runner.train(TrainConfig(workers=2, sync_every=2, compress="fp16"))
    with pytest.raises(ValueError, match="--workers 3"):
        runner.train(TrainConfig(workers=3, dp=2, tp=2))


@pytest.mark.timeout(90)
def test_two_workers_train_the_single_process_model(arrays, capfd, tmp_path):
    path = tmp_path / "m.json"
    par = runner.train(small(workers=2, metrics_json=str(path)), arrays=arrays, timeout_s=60)
    out = capfd.readouterr().out
    one = train(small(verbose=False), arrays=arrays)
    assert par["world_size"] == 2 and par["backend"] == "shm"
    assert abs(par["test_accuracy"] - one["test_accuracy"]) <= 0.004  # 2 of 500 may flip
    for a, b in zip(par["epochs"], one["epochs"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    # 2 ranks, float32 gradients of 784·16+16+16·10+10 parameters: a ring sends each rank's half
    n_params = 784 * 16 + 16 + 16 * 10 + 10
    assert par["bytes_per_step"] == pytest.approx(n_params * 4, rel=0.05)
    assert 0 < par["comm_seconds_fraction"] < 1
    assert "Epoch 2/2" in out and "/step sent" in out and out.count("Epoch 1/2") == 1
    saved = json.loads(path.read_text())
    assert saved["bytes_per_step"] == par["bytes_per_step"]


@pytest.mark.mpi
@pytest.mark.timeout(90)
def test_runner_over_mpi_matches_shm(arrays):
    pytest.importorskip("mpi4py")
    cfg = {"workers": 3, "epochs": 1, "verbose": False, "compress": "fp16"}
    shm = runner.train(small(**cfg), arrays=arrays, timeout_s=60)
    mpi = runner.train(small(backend="mpi", **cfg), arrays=arrays, timeout_s=60)
    assert mpi["backend"] == "mpi"
    assert mpi["epochs"][0]["train_loss"] == pytest.approx(shm["epochs"][0]["train_loss"],
                                                           rel=1e-6)


@pytest.mark.timeout(90)
def test_cli_runs_workers_with_balancing(tmp_path, capsys):
    from minilepton.cli import main
    path = tmp_path / "m.json"
    code = main(["train", "--workers", "2", "--epochs", "1", "--hidden", "16",
                 "--batch-size", "128", "--node-speeds", "1,0.5", "--balance", "static",
                 "--metrics-json", str(path)])
    assert code == 0
    metrics = json.loads(path.read_text())
    assert metrics["world_size"] == 2 and metrics["test_accuracy"] > 0.5
