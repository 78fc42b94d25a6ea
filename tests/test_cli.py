"""``minilepton`` end to end in subprocesses: a run, its outputs, and one-line failures."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minilepton import bench, cli

# Batches of 32 gain nothing from BLAS threads, and on a busy machine idle threads spin.
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "minilepton", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=ENV)


@pytest.mark.timeout(60)
def test_train_one_epoch_writes_metrics_and_parameters(tmp_path):
    out = run_cli("train", "--epochs", "1", "--hidden", "32", "--batch-size", "64",
                  "--metrics-json", str(tmp_path / "m.json"), "--save", str(tmp_path / "p.npz"),
                  "--checkpoint-dir", str(tmp_path / "ck"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Epoch 1/1 - loss ") and out.stdout.rstrip().endswith("samples/s")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["world_size"] == 1 and metrics["test_accuracy"] > 0.5
    assert metrics["config"]["hidden"] == [32] and metrics["config"]["batch_size"] == 64
    params = np.load(tmp_path / "p.npz")
    assert [params[k].shape for k in params.files] == [(784, 32), (32,), (32, 10), (10,)]
    assert os.listdir(tmp_path / "ck") == ["epoch_0001.npz"]


def _write_idx_folder(folder, images=b"garbage"):
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(folder / f"{name}.gz", "wb") as f:
            f.write(images)
    return folder


def _one_error_line(stderr: str, needle: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("minilepton: error: ") and needle in lines[0], lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "abc"], "invalid float"),
    (["--epochs", "0"], "--epochs"),
    (["--hidden", "0"], "--hidden"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--workers", "3", "--dp", "2"], "does not match"),
    (["--compress", "topk:0"], "--compress"),
    (["--resume"], "--checkpoint-dir"),
    (["--dataset", "default", "--data-dir", "."], "--data-dir"),
    (["--blas-threads", "0"], "--blas-threads"),
])
def test_bad_settings_give_one_line_and_exit_2(capsys, args, needle):
    assert cli.main(["train", *args]) == 2
    captured = capsys.readouterr()
    _one_error_line(captured.err, needle)
    assert captured.out == ""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, needle", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--device", "gpu"], "gpu"),
    (["--dataset", "mnist", "--data-dir", "MISSING"], "MISSING"),
    (["--dataset", "mnist", "--data-dir", "MISSING", "--workers", "2"], "MISSING"),
    (["--dataset", "fashion-mnist", "--data-dir", "CORRUPT"], "corrupt"),
    (["--optimizer", "sgd", "--lr", "1e30"], "loss became nan"),
])
def test_bad_input_end_to_end_gives_one_line_and_no_traceback(tmp_path, args, needle):
    if "MISSING" in args:
        args = [str(tmp_path / "missing") if a == "MISSING" else a for a in args]
        needle = str(tmp_path / "missing")
    if "CORRUPT" in args:
        folder = _write_idx_folder(tmp_path / "corrupt")
        args = [str(folder) if a == "CORRUPT" else a for a in args]
    out = run_cli("train", "--epochs", "1", *args)
    if "--device" in args and out.returncode == 0:
        pytest.skip("a GPU is usable here")
    assert out.returncode != 0
    _one_error_line(out.stderr, needle)
    assert "Traceback" not in out.stderr + out.stdout


@pytest.mark.timeout(60)
def test_debug_shows_the_traceback():
    out = run_cli("train", "--batch-size", "0", "--debug")
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.timeout(60)
def test_ctrl_c_exits_130_with_one_line():
    # A job started in the background inherits SIGINT ignored, so Python would never raise
    # KeyboardInterrupt; install the handler a terminal session gets, then run the CLI.
    entry = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
             "from minilepton.cli import main; sys.exit(main())")
    proc = subprocess.Popen([sys.executable, "-c", entry, "train", "--epochs", "1000",
                             "--hidden", "16", "--batch-size", "256"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("Epoch 1/1000")  # training has started
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.strip() == "minilepton: interrupted"


def test_parser_maps_every_flag_onto_train_config():
    args = cli.build_parser().parse_args([
        "train", "--hidden", "64", "--hidden", "32", "--workers", "4", "--micro-batches", "8",
        "--schedule", "1f1b", "--backend", "mpi", "--bucket-bytes", "4096", "--sync-every", "2",
        "--compress", "fp16", "--node-speeds", "1,1,0.5,1", "--balance", "static",
        "--link", "10gbe", "--trace", "t.json", "--log-dir", "logs", "--quiet"])
    cfg = cli.config_from_args(args)
    assert cfg.hidden == (64, 32) and cfg.world_size == 4 and cfg.node_speeds[2] == 0.5
    assert (cfg.micro_batches, cfg.schedule, cfg.backend, cfg.bucket_bytes, cfg.sync_every,
            cfg.compress, cfg.balance, cfg.link, cfg.verbose) == \
        (8, "1f1b", "mpi", 4096, 2, "fp16", "static", "10gbe", False)
    defaults = cli.config_from_args(cli.build_parser().parse_args(["train"]))
    assert (defaults.hidden, defaults.epochs, defaults.batch_size, defaults.optimizer,
            defaults.lr, defaults.dataset, defaults.world_size) == \
        ((128,), 5, 32, "adam", 1e-3, "default", 1)


def test_bench_discovers_modules_in_the_package(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_echo.py").write_text(
        '"""Echo a number (a test benchmark)."""\n'
        "def add_arguments(parser):\n    parser.add_argument('--n', type=int, default=1)\n"
        "def run(args):\n    print('n =', args.n)\n    return 3\n")
    (tmp_path / "broken.py").write_text("x = 1\n")
    monkeypatch.setattr(bench, "__path__", [str(tmp_path)])
    monkeypatch.delitem(sys.modules, "minilepton.bench.fake_echo", raising=False)
    assert {"fake_echo", "broken"} <= set(bench.names())
    assert bench.describe("fake_echo") == "Echo a number (a test benchmark)."
    assert cli.main(["bench", "fake_echo", "--n", "5"]) == 3
    assert capsys.readouterr().out == "n = 5\n"
    assert cli.main(["bench", "broken"]) == 2
    assert cli.main(["bench", "nope"]) == 2
    assert cli.main(["bench", "fake_echo", "--n", "x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "does not define add_arguments and run" in err[0]
    assert "unknown benchmark 'nope'" in err[1] and "minilepton bench fake_echo" in err[2]


@pytest.mark.timeout(120)
def test_blas_threads_caps_the_single_process():
    code = ("from minilepton import cli; from minilepton.cluster import blas; "
            "assert cli.main(['train', '--epochs', '1', '--hidden', '8', '--quiet', "
            "'--blas-threads', '1']) == 0; print(blas.current_threads())")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=100, check=False)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "None":
        pytest.skip("this NumPy's BLAS cannot be asked how many threads it runs")
    assert out.stdout.strip() == "1"
