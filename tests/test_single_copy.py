"""The single-copy path of private arrays: taken where the kernel allows, refused together.

Its bits are checked against the reference with every other fast path
(tests/test_comm_fast_paths.py); here: the dispatch takes it over ``single_copy_min_bytes``;
when a rank cannot read its peers every rank falls back to the staged split path (the same
decision on every rank, or the next step would deadlock); ranks whose arrays differ in size get
one error naming the sizes instead of reading past a peer's array.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from conftest import run_job, small_config

from minilepton.comm import CommError
from minilepton.comm.shm import dispatch as dispatch_module
from minilepton.comm.shm import reference, single_copy

N = 5000  # 40 kB of float64: over small_config's single_copy_min_bytes (4 KiB)


def _inputs(rank: int) -> np.ndarray:
    return np.random.default_rng(rank).standard_normal(N) * 10.0 ** (rank % 5)


YAMA = "/proc/sys/kernel/yama/ptrace_scope"


def kernel_lets_siblings_read() -> bool:
    """Linux without Yama, or with Yama's scope 0 or 1 (a worker declares the launcher its
    debugger, which lets the launcher's descendants read it): workers may read each other."""
    try:
        with open(YAMA) as f:
            return f.read().strip() in ("0", "1")
    except FileNotFoundError:
        return sys.platform.startswith("linux")


def path_job(comm, refuse_rank):
    if comm.rank == refuse_rank:  # this rank's kernel refuses to read other processes
        single_copy._READV = None
    taken = []
    pick = dispatch_module.path
    dispatch_module.path = lambda *a, **k: taken.append(pick(*a, **k)) or taken[-1]
    x = _inputs(comm.rank)
    want = x.copy()
    reference.allreduce(comm, want, np.add, False)
    comm.allreduce(x)
    return taken[-1], x.tobytes() == want.tobytes()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("P, refuse_rank", [(2, None), (3, None), (2, 1), (3, 0)])
def test_every_rank_takes_the_same_path_and_gets_the_reference_bits(P, refuse_rank):
    got = run_job("shm", path_job, P, (refuse_rank,))
    assert len(set(got)) == 1 and got[0][1]  # one path on every rank, the reference's bits
    if refuse_rank is not None:
        assert got[0][0] == "split"
    elif kernel_lets_siblings_read():
        assert got[0][0] == "single"


def mismatch_job(comm):
    x = np.ones(N + 100 * comm.rank)
    try:
        single_copy.allreduce(comm, x, np.add, False)
    except CommError as exc:
        return str(exc)
    return "no error"


@pytest.mark.timeout(60)
def test_arrays_of_different_sizes_are_one_error_on_every_rank():
    got = run_job("shm", mismatch_job, 2, config=small_config())
    assert got[0] == got[1]
    assert "differ in size" in got[0] and f"[{N * 8}, {(N + 100) * 8}]" in got[0]


def test_pull_copies_bytes_from_a_process_and_fails_in_words_on_a_bad_address():
    src, out = np.arange(1000.0), np.zeros(1000)
    single_copy.pull(os.getpid(), src.ctypes.data, out)
    assert out.tobytes() == src.tobytes()
    with pytest.raises(OSError, match="Bad address"):
        single_copy.pull(os.getpid(), 8, out)


def declare_job(comm):
    return single_copy.let_job_read(os.getppid())


@pytest.mark.timeout(60)
def test_a_worker_declares_the_launcher_its_debugger_where_yama_is():
    yama = os.path.exists(YAMA)  # Yama takes the declaration at any scope; no Yama, no prctl
    assert run_job("shm", declare_job, 2) == [yama, yama]
