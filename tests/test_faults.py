"""Fault tolerance: injected faults stop the job naming the rank; ``--max-restarts`` resumes it
from the newest checkpoint and ends bitwise equal to an uninterrupted run; checkpoints hold
whole tensors, so a run saved on one layout resumes on any other."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.cluster import WorkerError
from minilepton.cluster.faults import Fault, parse_fault
from minilepton.engine.config import TrainConfig


def _arrays(n=192, features=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, features)), rng.integers(0, 10, n), rng.random((48, features)),
            rng.integers(0, 10, 48))


COMMON = {"hidden": (16, 8), "epochs": 2, "batch_size": 16, "dtype": "float64",
          "optimizer": "adam", "lr": 1e-2, "verbose": False}  # 12 steps per epoch


def _params(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted runs' parameters, per world size."""
    out = {}
    for workers in (1, 2):
        path = tmp_path_factory.mktemp("straight") / f"w{workers}.npz"
        ml.train(TrainConfig(workers=workers, save=str(path), **COMMON), arrays=_arrays())
        out[workers] = _params(path)
    return out


def test_fault_specs_are_parsed_or_refused_in_one_line():
    assert parse_fault("kill:rank=1:step=5") == Fault("kill", 1, 5)
    assert parse_fault("slow:rank=0:step=2:seconds=0.5").seconds == 0.5
    for bad in ("boom:rank=1:step=2", "raise:rank=1", "raise:rank=x:step=2",
                "raise:rank=1:step=0", "kill:rank=1:step=2:seconds=3", "raise:step=2:step=3"):
        with pytest.raises(ValueError, match="--fault") as info:
            TrainConfig(workers=2, fault=[bad])
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="rank 2 of 2 workers"):
        ml.train(TrainConfig(workers=2, fault=["raise:rank=2:step=1"], **COMMON),
                 arrays=_arrays())


@pytest.mark.timeout(60)
def test_an_injected_fault_without_restarts_stops_the_job_naming_the_rank():
    with pytest.raises(WorkerError, match="worker rank 1 failed.*injected fault raise:rank=1"):
        ml.train(TrainConfig(workers=2, fault=["raise:rank=1:step=3"], **COMMON),
                 arrays=_arrays())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_a_restarted_job_ends_bitwise_equal_to_an_uninterrupted_one(kind, straight, tmp_path,
                                                                     capfd):
    path = tmp_path / "restarted.npz"
    metrics = ml.train(TrainConfig(workers=2, max_restarts=1, checkpoint_every=5,
                                   fault=[f"{kind}:rank=1:step=13"], save=str(path), **COMMON),
                       arrays=_arrays())
    err = capfd.readouterr().err
    assert "worker rank 1 failed" in err and "restart 1/1" in err
    assert metrics["restarts"] == 1 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    restarted = _params(path)
    for name, value in straight[2].items():
        assert np.array_equal(restarted[name], value), name


@pytest.mark.timeout(120)
def test_a_stalled_worker_is_stopped_and_the_job_restarts(straight, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILEPTON_COMM_TIMEOUT_S", "2")
    path = tmp_path / "restarted.npz"
    metrics = ml.train(TrainConfig(workers=2, max_restarts=1, checkpoint_every=4,
                                   fault=["stall:rank=0:step=6"], save=str(path), **COMMON),
                       arrays=_arrays())  # the peers give up on rank 0 after 2 s
    assert metrics["restarts"] == 1
    for name, value in straight[2].items():
        assert np.array_equal(_params(path)[name], value), name


@pytest.mark.timeout(120)
def test_one_process_restarts_too_and_a_slow_fault_only_delays(straight, tmp_path):
    path = tmp_path / "one.npz"
    metrics = ml.train(TrainConfig(max_restarts=1, checkpoint_every=7, save=str(path),
                                   fault=["slow:rank=0:step=2:seconds=0.1",
                                          "kill:rank=0:step=9"], **COMMON), arrays=_arrays())
    assert metrics["restarts"] == 1 and metrics["world_size"] == 1
    for name, value in straight[1].items():
        assert np.array_equal(_params(path)[name], value), name


@pytest.mark.timeout(150)
def test_with_min_workers_a_job_carries_on_with_fewer(straight, tmp_path, capfd):
    """Rank 2 of 3 fails twice: the job goes on with 2 workers, on the same global batch."""
    path = tmp_path / "shrunk.npz"
    metrics = ml.train(TrainConfig(workers=3, max_restarts=2, min_workers=2, checkpoint_every=3,
                                   fault=["raise:rank=2:step=4", "raise:rank=2:step=10"],
                                   save=str(path), **COMMON), arrays=_arrays())
    assert metrics["restarts"] == 2 and metrics["world_size"] == 2
    assert "on 2 worker(s)" in capfd.readouterr().err
    for name, value in straight[1].items():  # other sums, other rounding: not bitwise
        np.testing.assert_allclose(_params(path)[name], value, rtol=1e-10, atol=1e-13)


LAYOUTS = [{"workers": 1}, {"workers": 2}, {"tp": 2}, {"pp": 2, "micro_batches": 2},
           {"dp": 2, "tp": 2}]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("before, after", [(LAYOUTS[0], LAYOUTS[2]), (LAYOUTS[2], LAYOUTS[3]),
                                           (LAYOUTS[3], LAYOUTS[1]), (LAYOUTS[4], LAYOUTS[0]),
                                           (LAYOUTS[1], LAYOUTS[4])],
                         ids=lambda layout: "-".join(f"{k}{v}" for k, v in layout.items()))
def test_a_checkpoint_resumes_on_another_layout(before, after, straight, tmp_path):
    """Stop after 7 steps on one layout, finish on another: the serial result (rtol 1e-10)."""
    ck = str(tmp_path / "ck")
    stop = dict(COMMON, epochs=1)
    ml.train(TrainConfig(checkpoint_dir=ck, checkpoint_every=7, **before, **stop),
             arrays=_arrays())
    os.unlink(os.path.join(ck, "epoch_0001.npz"))  # as if stopped after step 7
    path = tmp_path / "resumed.npz"
    metrics = ml.train(TrainConfig(checkpoint_dir=ck, resume=True, save=str(path), **after,
                                   **COMMON), arrays=_arrays())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for name, value in straight[1].items():
        np.testing.assert_allclose(_params(path)[name], value, rtol=1e-10, atol=1e-13)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("layout", [{"tp": 2}, {"pp": 2, "micro_batches": 2},
                                    {"dp": 2, "tp": 2}],
                         ids=lambda layout: "-".join(f"{k}{v}" for k, v in layout.items()))
def test_restarts_are_bitwise_on_model_parallel_layouts(layout, tmp_path):
    straight_path, restarted_path = tmp_path / "straight.npz", tmp_path / "restarted.npz"
    ml.train(TrainConfig(save=str(straight_path), **layout, **COMMON), arrays=_arrays())
    last = TrainConfig(**layout).world_size - 1
    ml.train(TrainConfig(max_restarts=1, checkpoint_every=4, fault=[f"kill:rank={last}:step=10"],
                         save=str(restarted_path), **layout, **COMMON), arrays=_arrays())
    restarted = _params(restarted_path)
    for name, value in _params(straight_path).items():
        assert np.array_equal(restarted[name], value), name


@pytest.mark.mpi
@pytest.mark.timeout(150)
@pytest.mark.parametrize("kind", ["raise", "kill"])
def test_restarts_over_mpi_are_bitwise_too(kind, straight, tmp_path):
    pytest.importorskip("mpi4py")
    from minilepton.cluster.mpi_launch import find_mpiexec
    if find_mpiexec() is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    path = tmp_path / "restarted.npz"
    metrics = ml.train(TrainConfig(workers=2, backend="mpi", max_restarts=1, checkpoint_every=5,
                                   fault=[f"{kind}:rank=1:step=8"], save=str(path), **COMMON),
                       arrays=_arrays())
    assert metrics["restarts"] == 1 and metrics["backend"] == "mpi"
    for name, value in straight[2].items():  # shm and MPI sum in the same order: same bits
        assert np.array_equal(_params(path)[name], value), name


def test_the_cli_reports_a_failed_job_in_one_line_with_exit_1(capsys):
    from minilepton.cli import main
    code = main(["train", "--workers", "2", "--epochs", "1", "--hidden", "8", "--quiet",
                 "--fault", "raise:rank=1:step=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith("minilepton: error: worker rank 1 failed: InjectedFault")


@pytest.mark.timeout(240)
@settings(max_examples=6, deadline=None)
@given(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS), st.integers(2, 11))
def test_resume_across_any_two_layouts_at_any_step(before, after, stop):
    """Hypothesis over pairs of layouts and the step a run stops at: saved on one, finished on
    another, the result is the serial one (float64, rtol 1e-10)."""
    with tempfile.TemporaryDirectory() as tmp:
        ck = os.path.join(tmp, "ck")
        ml.train(TrainConfig(checkpoint_dir=ck, checkpoint_every=stop, **before,
                             **dict(COMMON, epochs=1)), arrays=_arrays())
        last = 11 // stop * stop  # the last mid-epoch checkpoint (the two newest are kept)
        kept = f"epoch_0000.step_{last:06d}.npz"
        assert kept in os.listdir(ck)
        for name in os.listdir(ck):  # as if the run had stopped right after step `last`
            if name != kept:
                os.unlink(os.path.join(ck, name))
        path = os.path.join(tmp, "resumed.npz")
        metrics = ml.train(TrainConfig(checkpoint_dir=ck, resume=True, save=path, **after,
                                       **COMMON), arrays=_arrays())
        assert metrics["resumed"]["global_step"] == last
        straight = os.path.join(tmp, "straight.npz")
        ml.train(TrainConfig(save=straight, **COMMON), arrays=_arrays())
        for name, value in _params(straight).items():
            np.testing.assert_allclose(_params(path)[name], value, rtol=1e-10, atol=1e-13)
