"""The MPI backend under mpiexec: bitwise collectives, counters, failures, and direct runs.

Every rank builds every rank's input from the same seed, so the parent can compute the reference
in the fixed order (rank order 0..P−1; the ring's cyclic order for algorithm="ring") and compare
each rank's result bit for bit. Jobs batch many cases to keep the number of mpiexec starts low.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("mpi4py", reason="the MPI backend needs mpi4py (pip install '.[mpi]')")

from conftest import files_in_use  # noqa: E402
from test_collectives import data, fold  # noqa: E402 - rank inputs, the rank-order fold

from minilepton.cluster import WorkerError, launch, simulate  # noqa: E402
from minilepton.cluster.mpi_launch import (  # noqa: E402
    _sweep_dead_jobs,
    find_mpiexec,
    in_mpi_job,
    launch_mpi,
)
from minilepton.cluster.simulate import PROFILES  # noqa: E402
from minilepton.comm.mpi import block_bounds, ring_order  # noqa: E402

MPIEXEC = find_mpiexec()
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")]

OPS = {"sum": np.add, "mean": np.add, "max": np.maximum}


def _launch(*args, **kwargs):
    return launch(*args, backend="mpi", **kwargs)  # job_timeout_s= goes on to launch_mpi


def reference(case, P):
    """What every rank must hold after ``allreduce(x, op, algorithm)``."""
    shape, dtype, seed, op, algorithm = case
    xs = [data(seed, k, shape, dtype).reshape(-1) for k in range(P)]
    if algorithm == "ring":
        b = block_bounds(xs[0].size, P)
        parts = [fold([xs[k][b[i]:b[i + 1]] for k in ring_order(i, P)], OPS[op]) for i in range(P)]
        out = np.concatenate(parts) if parts else xs[0]
    else:
        out = fold(xs, OPS[op])
    if op == "mean":
        np.divide(out, P, out=out)
    return out.reshape(shape)


# ---- jobs that run on the ranks (module level, so that the ranks can import them)
def allreduce_job(comm, cases):
    out = []
    for shape, dtype, seed, op, algorithm in cases:
        x = data(seed, comm.rank, shape, dtype)
        got = comm.allreduce(x, op, algorithm=algorithm)
        assert got is x
        out.append(x)
    return out


def collectives_job(comm, seed):
    P, r = comm.world_size, comm.rank
    mine = data(seed, r, (2 * P, 3), np.float32)
    rs = {op: comm.reduce_scatter(mine, op) for op in ("sum", "mean", "max")}
    gathered = comm.allgather(np.full((2, 2), r, np.int64))
    b = data(seed, r, (5,), np.float64)
    comm.broadcast(b, root=P - 1)
    passed = np.zeros(4, np.float32)
    if P > 1:  # pass a message around the ring, each rank adding its rank
        if r == 0:
            comm.send(np.arange(4, dtype=np.float32), 1)
            comm.recv(passed, P - 1)
        else:
            comm.recv(passed, r - 1)
            comm.send(passed + r, (r + 1) % P)
    sub = comm.split(r % 2, key=-r)
    v = np.array([10.0 ** r])
    sub.allreduce(v)
    split = (sub.rank, sub.world_size, float(v[0]))
    sub.close()
    comm.stats.reset()
    n = 12 * P  # divisible by P: the textbook byte counts hold exactly
    counts = {}
    for algorithm in ("ring", "ordered", "native"):
        comm.stats.reset()
        comm.allreduce(np.ones(n * 1024, np.float32), algorithm=algorithm)
        counts[algorithm] = (comm.stats.bytes_sent, comm.stats.messages_sent)
    comm.barrier()
    return rs, gathered, b, passed, split, counts


def check_allreduce(results, cases, P):
    for i, case in enumerate(cases):
        ref = reference(case, P)
        for rank, per_case in enumerate(results):
            got = per_case[i]
            assert got.dtype == ref.dtype and got.shape == ref.shape
            if case[4] == "native" and case[3] != "max":  # MPI's own order: same on all ranks
                rtol = 1e-5 if ref.dtype == np.float32 else 1e-12
                np.testing.assert_allclose(got, ref, rtol=rtol, atol=1e-3)
                assert got.tobytes() == results[0][i].tobytes(), f"rank {rank} differs, {case}"
            else:
                assert got.tobytes() == ref.tobytes(), f"rank {rank}, case {case}"


CASES = [((n,), dt, seed, op, alg)
         for n, dt, seed in ((1, np.float32, 1), (7, np.float64, 2), (1000, np.float32, 3),
                             (50_003, np.float32, 4), (3, np.float64, 5))
         for op in ("sum", "mean", "max") for alg in ("ordered", "ring", "native")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("P", [2, 4])
def test_allreduce_equals_rank_ordered_reference_bitwise(P):
    results = _launch(allreduce_job, P, args=(CASES,))
    check_allreduce(results, CASES, P)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("P", [2, 4])
def test_other_collectives_and_counters(P):
    seed = 11
    results = _launch(collectives_job, P, args=(seed,))
    inputs = [data(seed, k, (2 * P, 3), np.float32) for k in range(P)]
    for r, (rs, gathered, b, passed, split, counts) in enumerate(results):
        for op in ("sum", "mean", "max"):
            ref = fold([x[2 * r:2 * r + 2] for x in inputs], OPS[op])
            if op == "mean":
                np.divide(ref, P, out=ref)
            assert rs[op].tobytes() == ref.tobytes(), (r, op)
        assert np.array_equal(gathered, np.repeat(np.arange(P), 4).reshape(2 * P, 2))
        assert b.tobytes() == data(seed, P - 1, (5,), np.float64).tobytes()
        assert np.array_equal(passed, np.arange(4) + sum(range(P if r == 0 else r)))
        members = [k for k in range(P) if k % 2 == r % 2]
        assert split == (sorted(members, reverse=True).index(r), len(members),
                         sum(10.0 ** k for k in members))
        nbytes = 12 * P * 1024 * 4
        assert counts["ring"] == (2 * (P - 1) * nbytes // P, 2 * (P - 1))
        assert counts["ordered"] == counts["ring"]


@pytest.mark.timeout(90)
@settings(max_examples=2, deadline=None)
@given(P=st.integers(1, 4), n=st.integers(0, 20_000),
       dtype=st.sampled_from([np.float32, np.float64]),
       seed=st.integers(0, 2**16), op=st.sampled_from(["sum", "mean", "max"]),
       rows=st.sampled_from([1, 2, 3]))
def test_hypothesis_random_world_sizes_and_shapes(P, n, dtype, seed, op, rows):
    shape = (rows, n // rows)
    cases = [(shape, dtype, seed, op, alg) for alg in ("ordered", "ring")]
    check_allreduce(_launch(allreduce_job, P, args=(cases,)), cases, P)


def simulated_job(comm):
    return comm.link, simulate.node_speeds(), simulate.node_speed(), os.environ["WORLD_SIZE"]


@pytest.mark.timeout(30)
def test_the_simulated_cluster_options_reach_the_ranks():
    results = _launch(simulated_job, 2, link="1gbe", node_speeds=[1.0, 0.5])
    assert results == [(PROFILES["1gbe"], [1.0, 0.5], 1.0, "2"),
                       (PROFILES["1gbe"], [1.0, 0.5], 0.5, "2")]
    with pytest.raises(ValueError, match="node_speeds has 3 factors for 2 workers"):
        _launch(simulated_job, 2, node_speeds=[1, 1, 1])


def logging_job(comm):
    logging.getLogger("minilepton.test").warning("hello from the ranks")
    return comm.rank


@pytest.mark.timeout(30)
def test_rank_logs_reach_the_console_and_one_file_per_rank(tmp_path, capfd):
    assert _launch(logging_job, 2, log_dir=str(tmp_path)) == [0, 1]
    err = capfd.readouterr().err
    for rank in (0, 1):
        assert f"[rank {rank}] hello from the ranks" in err
        assert f"[rank {rank}] hello from the ranks" in (tmp_path / f"rank{rank}.log").read_text()


# ---- failures: nothing hangs, nothing is left behind
def raising_job(comm, pid_dir):
    _note_pid(comm, pid_dir)
    if comm.rank == 1:
        raise ValueError("rank one cannot go on")
    comm.barrier()  # the others wait here until the abort reaches them


def killed_job(comm, pid_dir):
    _note_pid(comm, pid_dir)
    if comm.rank == comm.world_size - 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(30)  # idle, not spinning in a collective: mpiexec kills these when rank 2 dies


def stalling_job(comm, pid_dir):
    _note_pid(comm, pid_dir)
    if comm.rank == 0:
        time.sleep(60)
    comm.barrier()


def _note_pid(comm, pid_dir):
    rank = comm.rank
    with open(os.path.join(pid_dir, f"{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))
    comm.barrier()  # every rank has written its process id before any of them fails


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _orphan_segments() -> set:
    """/dev/shm files that no live process has mapped (what a dead job would leave)."""
    return {f"/dev/shm/{name}" for name in os.listdir("/dev/shm")} - files_in_use(False)


@pytest.fixture
def job_tmp(tmp_path, monkeypatch):
    """(folder for the ranks' process ids, the launcher's private temporary folder)."""
    (tmp_path / "pids").mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path / "pids", tmp_path / "tmp"


def _assert_all_gone(job_tmp, P, before_segments):
    pid_dir, launcher_tmp = job_tmp
    pids = [int((pid_dir / name).read_text()) for name in os.listdir(pid_dir)]
    assert len(pids) == P
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], "a rank survived the failed job"
    assert not os.listdir(launcher_tmp), "the job's temporary directory was left behind"
    left = {p for p in _orphan_segments() - before_segments if "mpi" in p}
    assert not left, f"the job left shared memory behind: {left}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("job, rank, words, kwargs", [
    (raising_job, 1, ["ValueError: rank one cannot go on", "Traceback", "raising_job"], {}),
    (killed_job, 2, ["rank 2", "signal 9"], {}),
    (stalling_job, 0, ["stalled (rank", "reports CommError: barrier on rank",  # the stalled one
                       "rank(s) [0] did not arrive within 1.5 s"], {"timeout_s": 1.5}),
    (stalling_job, None, ["did not finish within 2 s"], {"job_timeout_s": 2}),
], ids=["raise", "sigkill", "stall", "job-timeout"])
def test_failing_rank_aborts_the_job_and_names_it(job_tmp, job, rank, words, kwargs):
    segments = _orphan_segments()
    t0 = time.monotonic()
    with pytest.raises(WorkerError) as info:
        _launch(job, 3, args=(str(job_tmp[0]),), **kwargs)
    assert time.monotonic() - t0 < 15
    assert info.value.rank in (rank if isinstance(rank, tuple) else (rank,))
    for word in words:
        assert word in str(info.value)
    _assert_all_gone(job_tmp, 3, segments)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_a_stopped_or_killed_launcher_takes_every_rank_with_it(job_tmp, sig):
    pid_dir, launcher_tmp = job_tmp
    code = textwrap.dedent(f"""
        import signal, sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background shell ignores it
        import test_mpi
        from minilepton.cluster.mpi_launch import launch_mpi
        try:
            launch_mpi(test_mpi.stalling_job, 2, ({str(pid_dir)!r},))
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    segments = _orphan_segments()
    proc = subprocess.Popen([sys.executable, "-c", code],
                            env={**os.environ, "TMPDIR": str(launcher_tmp)})
    deadline = time.monotonic() + 20
    while len(os.listdir(pid_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == (130 if sig == signal.SIGINT else -sig)
    if sig == signal.SIGKILL:  # no launcher left to clean up: the next launch sweeps its files
        deadline = time.monotonic() + 10  # mpiexec gets SIGTERM and stops the ranks
        while os.listdir(launcher_tmp) and time.monotonic() < deadline:
            _sweep_dead_jobs(min_age_s=0)  # sweeps only once no process names the job
            time.sleep(0.1)
    _assert_all_gone(job_tmp, 2, segments)


# ---- direct runs: mpiexec -n P python ... with no launcher process
DIRECT = """
import numpy as np, sys
from minilepton.cluster.mpi_launch import in_mpi_job, run_direct
def job(comm, fail):
    x = np.full(3, comm.rank + 1.0)
    comm.allreduce(x)
    if fail and comm.rank == 1:
        raise RuntimeError("direct rank failed")
    comm.barrier()
    print(f"rank {comm.rank}/{comm.world_size} in_mpi_job={in_mpi_job()} sum={x[0]:g}", flush=True)
run_direct(job, (sys.argv[1] == "fail",))
"""


@pytest.mark.timeout(30)
def test_direct_mpiexec_run():
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", DIRECT, "ok"],
                         capture_output=True, text=True, timeout=25, check=False)
    assert out.returncode == 0, out.stderr
    for rank in (0, 1):  # (the two ranks' lines may interleave in mpiexec's output)
        assert f"rank {rank}/2 in_mpi_job=True sum=3" in out.stdout


@pytest.mark.timeout(30)
def test_direct_run_failure_aborts_every_rank():
    segments = _orphan_segments()
    t0 = time.monotonic()
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-c", DIRECT, "fail"],
                         capture_output=True, text=True, timeout=25, check=False)
    assert out.returncode != 0
    assert time.monotonic() - t0 < 20
    assert "[rank 1] RuntimeError: direct rank failed" in out.stderr
    assert "in_mpi_job" not in out.stdout  # rank 0 never got past its barrier
    assert not {p for p in _orphan_segments() - segments if "mpi" in p}


def test_in_mpi_job_reads_the_process_manager_environment(monkeypatch):
    for name in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                 "PMIX_RANK", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not in_mpi_job()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert in_mpi_job()


@pytest.mark.timeout(30)
def test_bad_arguments_fail_with_one_clear_line():
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        launch_mpi(allreduce_job, 0)
    with pytest.raises(WorkerError, match="unknown MPI all-reduce algorithm 'tree'"):
        _launch(allreduce_job, 2, args=([((4,), np.float32, 0, "sum", "tree")],))
