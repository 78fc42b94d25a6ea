"""``minilepton simulate`` and ``minilepton calibrate``: every train flag, the JSON, the first-use
calibration, the search, one-line errors; calibration's pieces (line fits, the cache folder, one
small collectives job with a timeout). No timing is asserted."""

from __future__ import annotations

import argparse
import json
import os

import pytest
from test_sim import fake_profile

from minilepton import cli
from minilepton.engine import calibrate, calibrate_comm, predict

REQUIRED = {"step_seconds", "samples_per_second", "tflops_per_device", "memory", "breakdown"}
MEMORY_KEYS = {"parameters_bytes", "gradients_bytes", "optimizer_bytes", "activations_peak_bytes",
               "buffers_bytes", "fits"}
GPT = ["--model", "gpt", "--layers", "4", "--hidden-size", "512", "--heads", "8", "--seq-len",
       "256", "--vocab", "1024", "--batch-size", "16"]


def _sub(name):
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.choices and "train" in a.choices).choices
    return choices[name]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def profile_file(tmp_path):
    path = tmp_path / "made-up.json"
    path.write_text(json.dumps(fake_profile()))
    return str(path)


def test_simulate_takes_every_train_flag_as_train_does():
    train, simulate = _sub("train"), _sub("simulate")
    mine = {a.dest: a for a in simulate._actions}
    flags = [a for a in train._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 30
    for action in flags:
        twin = mine.get(action.dest)
        assert twin is not None, action.option_strings
        assert twin.option_strings == action.option_strings
        assert (twin.default, twin.choices, twin.nargs, twin.type) == \
            (action.default, action.choices, action.nargs, action.type), action.dest


def test_a_training_command_becomes_its_prediction(capsys, profile_file):
    words = ["--epochs", "2", "--batch-size", "64", "--hidden", "64", "64", "--optimizer", "sgd",
             "--momentum", "0.9", "--lr", "0.1", "--seed", "3", "--dtype", "float32",
             "--workers", "2", "--bucket-bytes", "4096", "--compress", "fp16",
             "--node-speeds", "1,0.5", "--balance", "static", "--link", "10gbe",
             "--metrics-json", "never-written.json", "--save", "never.npz", "--quiet",
             "--zero", "1", "--precision", "bf16", "--grad-accum", "2", "--memory-report"]
    code, out, _ = run(capsys, "simulate", *words, "--hardware", profile_file, "--json")
    assert code == 0
    result = json.loads(out)
    assert REQUIRED <= set(result) and MEMORY_KEYS <= set(result["memory"])
    assert result["layout"]["dp"] == 2 and result["layout"]["grad_accum"] == 2
    assert not os.path.exists("never-written.json") and not os.path.exists("never.npz")
    args = cli.build_parser().parse_args(["simulate", *words])
    cfg = cli.config_from_args(args)
    assert cfg.hidden == (64, 64) and cfg.zero == 1 and cfg.link == "10gbe"


def test_gpt_on_a_builtin_gpu_profile(capsys):
    code, out, _ = run(capsys, "simulate", *GPT, "--dp", "2", "--tp", "2", "--pp", "2",
                       "--micro-batch-size", "2", "--schedule", "1f1b", "--precision", "bf16",
                       "--recompute", "--hardware", "h100-sxm", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["layout"]["micro_batches"] == 4 and result["tokens_per_second"] > 0
    assert 0 < result["mfu"] < 1
    comm = result["breakdown"]["communication_s"]
    assert {"tensor/allreduce", "data/allreduce"} <= set(comm)
    code, out, _ = run(capsys, "simulate", *GPT, "--hardware", "a100-80gb")
    assert code == 0 and "throughput" in out and "2mkn" in out and "fits" in out


def test_this_machine_is_calibrated_on_first_use_and_cached(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def fake_calibrate(log=print, collectives=True):
        calls.append(1)
        profile = fake_profile()
        profile["cores"] = calibrate.cpu_count()
        return profile

    monkeypatch.setattr(calibrate, "calibrate", fake_calibrate)
    for _ in range(2):
        code, out, _ = run(capsys, "simulate", "--workers", "2", "--json")
        assert code == 0 and json.loads(out)["devices"] == 2
    assert calls == [1]
    path = calibrate.profile_path()
    assert path.parent == tmp_path / "minilepton" and json.loads(path.read_text())["kind"] == \
        "measured"
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temporary file left


def test_search_ranks_layouts_that_fit(capsys):
    code, out, _ = run(capsys, "simulate", *GPT, "--workers", "16", "--precision", "bf16",
                       "--schedule", "1f1b", "--hardware", "a100-80gb", "--search", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["kind"] == "search" and result["fitting"] == len(result["layouts"]) > 1
    assert all(r["dp"] * r["tp"] * r["pp"] == 16 for r in result["layouts"])
    code, out, _ = run(capsys, "simulate", *GPT, "--workers", "16", "--hardware", "a100-80gb",
                       "--search", "--top", "3")
    assert code == 0 and "layouts tried" in out and len(out.splitlines()) == 3 + 4


@pytest.mark.parametrize("words, says", [
    (["--hardware", "abacus"], "unknown hardware"),
    ([*GPT, "--heads", "7", "--hardware", "a100-80gb"], "not divisible"),
    (["--hardware", "a100-80gb", "--network", "carrier-pigeon"], "unknown link"),
    (["--hardware", "a100-80gb", "--batch-size", "30", "--dp", "4"], "does not split"),
    (["--hardware", "a100-80gb", "--micro-batch-size", "0"], "positive"),
    (["--hardware", "a100-80gb", "--zero", "5"], "invalid choice"),
])
def test_bad_input_is_one_line_and_status_2(capsys, words, says):
    code, out, err = run(capsys, "simulate", *words)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err


def test_fit_line_recovers_a_and_b():
    points = [(n, 5e-6 + 2e-10 * n) for n in (64, 4096, 65536, 1 << 20)]
    fit = calibrate_comm.fit_line(points)
    assert fit["a"] == pytest.approx(5e-6, rel=1e-6) and fit["b"] == pytest.approx(2e-10, rel=1e-6)


def test_the_profile_goes_to_the_per_user_cache_whole(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert calibrate.profile_path().parent == tmp_path / "cache" / "minilepton"
    path = calibrate.save({"kind": "measured", "x": 1})
    assert json.loads(path.read_text()) == {"kind": "measured", "x": 1}
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.timeout(120)
def test_collectives_are_timed_by_worker_processes():
    fits = calibrate_comm.measure_collectives(log=lambda line: None, worlds=(2,),
                                              sizes=[64, 65536])["shm"]
    for op in ("allreduce", "allgather", "reduce_scatter", "broadcast", "p2p"):
        for line in fits[op].values():
            assert line["2"]["a"] >= 0 and line["2"]["b"] >= 0 and len(line["2"]["points"]) == 2


def test_the_engine_reads_the_dataset_shape_without_loading_it(monkeypatch):
    cfg = cli.config_from_args(cli.build_parser().parse_args(["train"]))
    assert predict.dataset_shape(cfg) == (6000, 784)
    other = cli.config_from_args(cli.build_parser().parse_args(["train", "--dataset", "mnist",
                                                                "--data-dir", "/nonexistent"]))
    assert predict.dataset_shape(other) == (60000, 784)
    assert isinstance(predict.layout(cfg, argparse.Namespace()), predict.sim.Layout)
