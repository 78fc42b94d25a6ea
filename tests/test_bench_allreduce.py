"""The all-reduce benchmark's arithmetic and its limit, and the cache size the arena path uses.

The benchmark runs for real (two shm workers, two small sizes, one round): every row carries
the two copy bandwidths of the same run, and ``of_limit`` is busbw over the pull bandwidth.
``l2_bytes`` reads a made-up /sys tree.
"""

from __future__ import annotations

import argparse

import pytest

from minilepton.bench import allreduce
from minilepton.bench._allreduce_report import format_table, rows
from minilepton.comm.shm.config import ShmConfig, l2_bytes


def _args(**over):
    base = {"workers": "2", "sizes": "1KiB,64KiB", "backend": "shm", "algorithm": "rsag",
            "paths": "arena,private", "rounds": 1, "repeats": 1, "target_ms": 2.0,
            "no_baseline": True, "json": None, "figure": None}
    return argparse.Namespace(**{**base, **over})


@pytest.mark.timeout(120)
def test_every_row_has_both_copy_bandwidths_and_its_share_of_the_pull_limit():
    result = allreduce.measure(_args())
    table = result["results"]
    assert {(r["path"], r["bytes"]) for r in table} == {
        (p, b) for p in ("arena", "private") for b in (1024, 65536)}
    for r in table:
        assert r["copy_GBps"] > 0 and r["pull_GBps"] > 0
        assert r["busbw_GBps"] == pytest.approx(r["bytes"] / r["seconds"] / 1e9)  # P = 2
        assert r["of_limit"] == pytest.approx(r["busbw_GBps"] / r["pull_GBps"])
        assert r["vs_mpich"] is None  # --no-baseline
    text = format_table(table)
    assert "pull" in text.splitlines()[0] and "of pull" in text.splitlines()[0]


def test_rows_take_the_medians_and_the_mpi_baseline():
    runs = {("shm", "rsag", "arena", 1 << 20): [2e-4, 1e-4, 3e-4],
            ("mpich", "raw", "private", 1 << 20): [4e-4],
            ("memcpy", "copy", "copy", 1 << 20): [5e-5],
            ("memcpy", "copy", "pull", 1 << 20): [1e-4, 1e-4]}
    got = {(r["backend"], r["path"]): r for r in rows(4, runs, [1 << 20])}
    assert set(got) == {("shm", "arena"), ("mpich", "private")}
    r = got["shm", "arena"]
    assert r["seconds"] == 2e-4 and r["vs_mpich"] == pytest.approx(2.0)
    assert r["busbw_GBps"] == pytest.approx(1.5 * (1 << 20) / 2e-4 / 1e9)
    assert r["pull_GBps"] == pytest.approx((1 << 20) / 1e-4 / 1e9)
    assert r["of_limit"] == pytest.approx(r["busbw_GBps"] / r["pull_GBps"])


def _cache(tmp_path, *levels_sizes):
    for k, (level, size) in enumerate(levels_sizes):
        d = tmp_path / f"index{k}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "size").write_text(f"{size}\n")
    return str(tmp_path)


def test_l2_bytes_reads_the_level_2_cache_and_falls_back_elsewhere(tmp_path):
    assert l2_bytes(_cache(tmp_path / "a", (1, "48K"), (1, "64K"), (2, "2048K"), (3, "480M"))) \
        == 2 << 20
    assert l2_bytes(_cache(tmp_path / "b", (1, "32K"), (2, "1M"))) == 1 << 20
    assert l2_bytes(str(tmp_path / "missing"), default=12345) == 12345
    assert l2_bytes(_cache(tmp_path / "c", (1, "32K")), default=7) == 7     # no L2 listed
    assert l2_bytes(_cache(tmp_path / "d", (2, "lots")), default=9) == 9   # unreadable size


def test_arena_pieces_default_to_one_l2_with_a_core_per_worker_else_none(monkeypatch):
    monkeypatch.setattr("minilepton.comm.shm.config.l2_bytes", lambda: 3 << 20)
    assert ShmConfig().resolve(2, cores=2).pipeline_bytes == 3 << 20
    assert ShmConfig().resolve(4, cores=2).pipeline_bytes == 0
    assert ShmConfig(pipeline_bytes=1 << 20).resolve(4, cores=2).pipeline_bytes == 1 << 20
