"""The launcher: results in rank order, worker environment, logging, and supervision (a worker
that raises, is killed, stalls, or a Ctrl-C on the launcher: the job ends within a bound with
the right message, no worker survives, no shared-memory segment is left)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from minilepton.cluster import WorkerError, launch
from minilepton.comm.shm.arena import PREFIX, shm_dir


def _segments(pid=None):
    """This process's (or ``pid``'s) arenas still in /dev/shm."""
    mine = f"{PREFIX}{pid or os.getpid()}-"
    return sorted(name for name in os.listdir(shm_dir()) if name.startswith(mine))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pids(directory, n, timeout_s=20.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        names = [f for f in os.listdir(directory) if f.endswith(".pid")]
        if len(names) == n:
            return [int(open(os.path.join(directory, f)).read() or 0) for f in names]
        time.sleep(0.02)
    raise AssertionError(f"only {len(names)} of {n} workers started")


def _assert_gone(pids):
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in pids if _alive(p)], "a worker survived the job"


# ---- jobs (module level: picklable under spawn)
def env_job(comm):
    from minilepton.cluster import blas

    return (comm.rank, comm.world_size, os.environ["RANK"], os.environ["WORLD_SIZE"],
            os.environ["LOCAL_RANK"], os.environ["OPENBLAS_NUM_THREADS"], blas.current_threads(),
            os.environ.get("MY_FLAG"))


def failing_job(comm, how, directory):
    with open(os.path.join(directory, f"{comm.rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    comm.barrier()
    if comm.rank == 1:
        if how == "raise":
            raise ValueError("rank one cannot go on")
        if how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "stall":
            time.sleep(60)
    comm.allreduce(np.ones(10))
    comm.barrier()


def logging_job(comm):
    logging.getLogger("minilepton.test").warning("hello from %s", comm.rank)
    comm.allreduce(np.ones(4))
    return comm.rank


def tiny_job(comm):
    return comm.rank


def arena_job(comm):
    comm.zeros((64 << 20,), np.float64)  # 512 MiB per rank


# ---- tests
@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_results_in_rank_order_with_rank_env_and_blas_share(start_method):
    out = launch(env_job, 3, start_method=start_method, env={"MY_FLAG": "yes"})
    share = str(max(1, len(os.sched_getaffinity(0)) // 3))
    for r, got in enumerate(out):
        assert got[:6] == (r, 3, str(r), "3", str(r), share)
        assert got[6] in (None, int(share))
        assert got[7] == "yes"
    assert launch(env_job, 2, blas_threads=2)[0][5] == "2"
    with pytest.raises(TypeError, match="job_timeout_s apply to backend='mpi' only"):
        launch(env_job, 2, job_timeout_s=5)
    assert not _segments()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how, rank, words", [
    ("raise", 1, ["rank 1", "ValueError: rank one cannot go on", "Traceback", "failing_job"]),
    ("sigkill", 1, ["rank 1", "signal 9", "SIGKILL"]),
    ("stall", 1, ["stalled (rank ", "CommError", "rank(s) [1] did not arrive within 1.5 s"]),
], ids=["raise", "sigkill", "stall"])
def test_a_failing_worker_stops_the_job_and_is_named(tmp_path, how, rank, words):
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as info:
        launch(failing_job, 3, args=(how, str(tmp_path)), timeout_s=1.5)
    assert time.monotonic() - t0 < 15
    assert info.value.rank == rank  # a stall: the rank that stalled, not one that noticed
    for word in words:
        assert word in str(info.value)
    _assert_gone(_pids(tmp_path, 3))
    assert not _segments()


CTRL_C_SCRIPT = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell ignores it
    sys.path.insert(0, {tests!r})
    from test_launcher import failing_job
    from minilepton.cluster import launch
    try:
        launch(failing_job, 3, args=("stall", {directory!r}), timeout_s=60)
    except KeyboardInterrupt:
        sys.exit(130)
""")


@pytest.mark.timeout(60)
def test_ctrl_c_stops_every_worker_and_exits_130(tmp_path):
    script = CTRL_C_SCRIPT.format(tests=os.path.dirname(__file__), directory=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        pids = _pids(tmp_path, 3)
        time.sleep(0.3)  # all in the job's collective now
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 130
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_gone(pids)
    assert not _segments(proc.pid)


@pytest.mark.timeout(60)
def test_200_launches_leave_shm_and_file_descriptors_as_they_were():
    launch(tiny_job, 1)  # the first launch opens what stays open (imports, the log relay's lock)
    fds = sorted(os.listdir("/proc/self/fd"))
    for i in range(200):
        P = 2 if i % 10 == 0 else 1  # mostly one worker: a fork is what a launch costs
        assert launch(tiny_job, P) == list(range(P))
    assert not _segments()
    deadline = time.monotonic() + 2  # a pipe or two may still be closing in a helper thread
    while len(os.listdir("/proc/self/fd")) > len(fds) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= len(fds) + 1  # +1: listdir's own descriptor


@pytest.mark.timeout(60)
def test_worker_logs_reach_the_launcher_with_a_rank_prefix_and_files(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert launch(logging_job, 2, log_dir=str(tmp_path), env={"MINILEPTON_VERBOSE": "1"}) == [0, 1]
    text = caplog.text
    assert "[rank 0] hello from 0" in text and "[rank 1] hello from 1" in text
    assert "allreduce sum 32 B" in text  # the verbose switch shows every collective
    for r in (0, 1):
        assert f"[rank {r}] hello from {r}" in (tmp_path / f"rank{r}.log").read_text()


@pytest.mark.timeout(60)
def test_an_allocation_that_does_not_fit_says_so():
    with pytest.raises(WorkerError, match="does not fit in the shared-memory arena"):
        launch(arena_job, 2, arena_bytes=256 << 20)
    assert not _segments()


def test_bad_arguments_give_one_clear_error():
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        launch(tiny_job, 0)
    with pytest.raises(ValueError, match="unknown backend 'tcp'"):
        launch(tiny_job, 2, backend="tcp")
    with pytest.raises(ValueError, match="node_speeds has 3 factors for 2 workers"):
        launch(tiny_job, 2, node_speeds=[1, 1, 1])
    with pytest.raises(ValueError, match="unknown link"):
        launch(tiny_job, 2, link="carrier-pigeon")
    assert not _segments()


@pytest.mark.timeout(60)
def test_a_launch_reaps_arenas_left_by_a_launcher_that_was_killed():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    orphan = os.path.join(shm_dir(), f"{PREFIX}{dead.pid}-0123abcd")
    open(orphan, "wb").close()
    try:
        assert launch(tiny_job, 1) == [0]
        assert not os.path.exists(orphan)
    finally:
        if os.path.exists(orphan):
            os.unlink(orphan)
