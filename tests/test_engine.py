"""The engine: one Python entry (``ml.train``) that runs exactly what ``minilepton train`` runs,
one process as the 1-rank case of the same path, and the pieces it is made of (``LocalComm``,
the post-accumulate gradient hook, atomic files, one parser per option)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import minilepton as ml
from minilepton import cli
from minilepton.cluster import launch, simulate
from minilepton.comm.local import LocalComm
from minilepton.engine import recipe
from minilepton.engine import run as engine_run
from minilepton.engine.config import TrainConfig
from minilepton.files import atomic_write, atomic_write_text


def test_the_python_entry_is_the_engine():
    assert ml.train is engine_run.train and ml.TrainConfig is TrainConfig


@pytest.mark.timeout(120)
def test_python_api_and_cli_run_the_same_job(tmp_path):
    """``ml.train(TrainConfig(...))`` and ``minilepton train`` with the same flags: same bits."""
    flags = {"workers": 2, "epochs": 1, "hidden": (16,), "batch_size": 256, "seed": 1}
    api = ml.train(ml.TrainConfig(verbose=False, metrics_json=str(tmp_path / "api.json"),
                                  **flags))
    code = cli.main(["train", "--workers", "2", "--epochs", "1", "--hidden", "16",
                     "--batch-size", "256", "--seed", "1", "--quiet",
                     "--metrics-json", str(tmp_path / "cli.json")])
    assert code == 0
    from_cli = json.loads((tmp_path / "cli.json").read_text())
    from_api = json.loads((tmp_path / "api.json").read_text())
    assert from_api["world_size"] == from_cli["world_size"] == api["world_size"] == 2
    for key in ("test_loss", "test_accuracy"):
        assert from_api[key] == from_cli[key] == api[key]
    assert from_api["epochs"][0]["train_loss"] == from_cli["epochs"][0]["train_loss"]
    assert from_cli["bytes_per_step"] > 0 and from_cli["backend"] == "shm"


def _arrays(n=256, features=12, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, features)), rng.integers(0, 10, n), rng.random((64, features)),
            rng.integers(0, 10, 64))


@pytest.mark.timeout(120)
def test_one_process_is_the_one_rank_case_of_the_parallel_path(tmp_path):
    """World size 1 runs on ``LocalComm``; --workers 2 over shm ends with the same parameters."""
    common = {"hidden": (8,), "epochs": 2, "batch_size": 32, "dtype": "float64",
              "optimizer": "sgd", "lr": 0.1, "verbose": False}
    one = ml.train(TrainConfig(save=str(tmp_path / "one.npz"), **common), arrays=_arrays())
    two = ml.train(TrainConfig(workers=2, save=str(tmp_path / "two.npz"), **common),
                   arrays=_arrays())
    assert one["backend"] == "local" and one["bytes_per_step"] == 0
    assert two["backend"] == "shm" and two["world_size"] == 2
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        for name in a.files:
            np.testing.assert_allclose(b[name], a[name], rtol=1e-10, atol=1e-13)


def test_local_comm_collectives_are_the_identity_and_are_counted():
    comm = LocalComm()
    x = np.arange(6.0)
    assert comm.allreduce(x, op="mean") is x and np.array_equal(x, np.arange(6.0))
    assert np.array_equal(comm.reduce_scatter(x), x) and np.array_equal(comm.allgather(x), x)
    assert comm.allgather(np.float64(2.0).reshape(())).shape == (1,)
    assert comm.broadcast(x, root=0) is x
    comm.barrier()
    assert comm.stats.calls == {"allreduce": 1, "reduce_scatter": 1, "allgather": 2,
                                "broadcast": 1, "barrier": 1}
    assert comm.stats.bytes_sent == 0 and comm.split(color=3).world_size == 1
    with pytest.raises(ValueError, match="outside 0..0"):
        comm.send(x, 1)
    with pytest.raises(ValueError, match="unknown reduction op"):
        comm.allreduce(x, op="min")


def test_post_accumulate_grad_hook_sees_each_leafs_final_gradient():
    w = ml.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = ml.Tensor(np.array([0.5, 0.5]), requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda leaf: seen.append(("w", leaf.grad.copy())))
    b.register_post_accumulate_grad_hook(lambda leaf: seen.append(("b", leaf.grad.copy())))
    y = w * w + w * b + b  # w is used three times, b twice: one call each, after the sum
    y.sum().backward()
    grads = dict(seen)
    assert len(seen) == 2
    np.testing.assert_array_equal(grads["w"], 2 * w.data + b.data)
    np.testing.assert_array_equal(grads["b"], w.data + 1)
    y.sum().backward()  # a second pass: the hook sees the accumulated gradient
    assert len(seen) == 4 and np.array_equal(dict(seen[2:])["w"], 2 * (2 * w.data + b.data))
    with pytest.raises(ValueError, match="leaves"):
        (w * 2).register_post_accumulate_grad_hook(print)


def test_atomic_write_replaces_a_planted_link_and_leaves_no_temporary(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "metrics.json"
    os.symlink(victim, out)  # another user's link where the run will write
    atomic_write_text(out, "{}")
    assert victim.read_text() == "precious" and not out.is_symlink() and out.read_text() == "{}"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "params.npz", fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "victim.txt"]


def _speed_probe(comm):
    strategy = recipe.build_strategy(comm, TrainConfig(dp=2, hidden=(4,)), 12)
    return simulate.node_speed(), strategy.slow_down is not None


@pytest.mark.timeout(60)
def test_node_speeds_are_relative_to_the_fastest_node_everywhere():
    """``--node-speeds 2,1`` is ``1,0.5``: rank 1 is slowed under data parallelism too."""
    assert launch(_speed_probe, 2, node_speeds=[2.0, 1.0], timeout_s=30) == [(1.0, True),
                                                                            (0.5, True)]
    assert TrainConfig(workers=2, node_speeds="2,1").node_speeds == (2.0, 1.0)
    with pytest.raises(ValueError, match="--node-speeds"):
        TrainConfig(workers=2, node_speeds="2,x")


def test_links_are_named_or_given_as_latency_and_bandwidth():
    assert TrainConfig(workers=2, link="5,25").link == "5,25"
    with pytest.raises(ValueError, match="--link"):
        TrainConfig(workers=2, link="carrier-pigeon")


def test_layout_errors_are_one_line_before_any_worker_starts():
    for cfg, match in [(TrainConfig(tp=2, sync_every=2), "--sync-every"),
                       (TrainConfig(workers=2, sync_every=2, compress="fp16"), "--compress"),
                       (TrainConfig(trace="t.json"), "--trace"),
                       (TrainConfig(tp=2, hidden=(1,)), "--tp 2")]:
        with pytest.raises(ValueError, match=match) as info:
            ml.train(cfg)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="one-process"):
        ml.train(TrainConfig(workers=2, verbose=False), arrays=_arrays(), log=print)


def test_output_paths_are_checked_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("")
    for cfg, match in [
            (TrainConfig(metrics_json=str(tmp_path / "afile" / "m.json")), "--metrics-json.*is a file"),
            (TrainConfig(checkpoint_dir=str(tmp_path / "afile")), "--checkpoint-dir .* is a file"),
            (TrainConfig(save=str(tmp_path)), "--save .* is a folder")]:
        with pytest.raises(ValueError, match=match):
            ml.train(cfg)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="no permission"):
            ml.train(TrainConfig(save=str(locked / "p.npz")))


def test_an_empty_idx_set_names_its_files(tmp_path):
    from minilepton.data import DataError
    from minilepton.data.idx import write_idx
    for stem, array in (("train-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
                        ("train-labels-idx1-ubyte", np.zeros(0, np.uint8)),
                        ("t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8)),
                        ("t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))):
        write_idx(tmp_path / stem, array)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*no images"):
        ml.data.load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.timeout(60)
def test_sigterm_stops_the_workers_and_exits_143_with_one_line():
    import signal
    import subprocess
    import sys
    import time
    proc = subprocess.Popen([sys.executable, "-m", "minilepton", "train", "--workers", "2",
                             "--epochs", "100", "--quiet"], stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert err.strip().splitlines() == ["minilepton: terminated (SIGTERM); workers stopped"]


def test_a_bad_environment_variable_stops_even_one_process(monkeypatch):
    from minilepton.environment import BadEnvironment
    monkeypatch.setenv("MINILEPTON_COMM_TIMEOUT_S", "nan")
    with pytest.raises(BadEnvironment, match="MINILEPTON_COMM_TIMEOUT_S='nan'"):
        ml.train(TrainConfig(epochs=1, verbose=False))


def test_a_planted_log_link_is_refused_not_followed(tmp_path):
    from minilepton.cluster.logs import rank_file_handler
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "logs").mkdir()
    os.symlink(victim, tmp_path / "logs" / "rank1.log")
    with pytest.raises(OSError):
        rank_file_handler(str(tmp_path / "logs"), 1)
    handler = rank_file_handler(str(tmp_path / "logs"), 0)
    handler.stream.close()
    assert victim.read_text() == "precious"
    assert oct((tmp_path / "logs" / "rank0.log").stat().st_mode & 0o777) == "0o600"
