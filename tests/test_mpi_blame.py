"""An MPI job names the rank that failed, not the one that noticed, and leaves nothing behind.

- direct runs (``mpiexec -n 2 python -m minilepton train``): a rank killed by a signal is named
  by its guard (``cluster.rank_guard``); a stalled rank is named by the rank that timed out;
  SIGTERM to mpiexec, even while a rank cannot start MPI, leaves no process and no MPI file;
- launched runs: a rank that stalls inside a sub-group is named (``comm.mpi.presence``).

"Nothing behind": no MPICH file created during the test that no live process maps or holds
(``_left_behind``), and no process of the job (found by a token in its environment).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import files_in_use

pytest.importorskip("mpi4py", reason="MPI runs need mpi4py (pip install '.[mpi]')")
from minilepton.cluster import WorkerError, launch
from minilepton.cluster.mpi_launch import find_mpiexec

MPIEXEC = find_mpiexec()
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["-m", "minilepton", "train", "--workers", "2", "--hidden", "16", "--batch-size", "64"]
MPI_FILE = re.compile(r"/dev/shm/mpich_shm_\w+|/tmp/hydra_hwloc_xmlfile_\w+")


def _mpi_files() -> set:
    names = [f"/dev/shm/{n}" for n in os.listdir("/dev/shm")] + [f"/tmp/{n}" for n in
                                                                   os.listdir("/tmp")]
    return {n for n in names if MPI_FILE.fullmatch(n)}


def _left_behind(before: set) -> set:
    return (_mpi_files() - before) - files_in_use()


def _job_processes(token: str) -> list:
    """Live (not zombie) processes whose environment holds ``token``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if token.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(pid))
        except OSError:
            continue
    return found


def _direct(args, extra_env=None, **popen):
    """``mpiexec -n 2 python ARGS`` in its own session, marked by a token in its environment."""
    token = f"DIRECT_RUN_TOKEN={secrets.token_hex(8)}"
    env = {**os.environ, **(extra_env or {}), "DIRECT_RUN_TOKEN": token,
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, **popen)
    return proc, token


def _finish(proc, token, before, timeout_s=30):
    """(exit status, stderr); then nothing of the job may be left (a moment to go allowed)."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 5
    while (_job_processes(token) or _left_behind(before)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _job_processes(token), "a process of the job was left"
    assert not _left_behind(before), f"the job left MPI files: {_left_behind(before)}"
    return proc.returncode, err


@pytest.mark.timeout(60)
def test_a_killed_rank_is_named_with_its_signal_and_leaves_nothing():
    before = _mpi_files()
    proc, token = _direct([*TRAIN, "--epochs", "2", "--fault", "kill:rank=1:step=3"])
    code, err = _finish(proc, token, before)
    named = re.findall(r"minilepton: rank (\d) \(pid \d+, started as \d+\) died: (.*)", err)
    assert code != 0 and named == [("1", "killed by signal 9 (SIGKILL)")], err


@pytest.mark.timeout(60)
def test_a_stalled_rank_is_named_in_a_direct_run():
    before = _mpi_files()
    proc, token = _direct([*TRAIN, "--epochs", "2", "--fault", "stall:rank=1:step=3"],
                          {"MINILEPTON_COMM_TIMEOUT_S": "2"})
    code, err = _finish(proc, token, before)
    assert code != 0 and re.search(r"\[rank 1\] stalled \(rank 0 reports CommError: .*"
                                   r"rank\(s\) \[1\] did not arrive within 2 s", err), err


@pytest.mark.timeout(60)
def test_sigterm_to_mpiexec_stops_a_direct_run_and_leaves_nothing():
    before = _mpi_files()
    proc, token = _direct([*TRAIN, "--epochs", "1000"])
    assert proc.stdout.readline().startswith("Epoch 1/1000"), "the run did not start training"
    os.kill(proc.pid, signal.SIGTERM)
    code, _ = _finish(proc, token, before)
    assert code != 0


STARTING = """
import os, sys
if os.environ["PMI_RANK"] == "1":
    sys.exit(143)  # as if stopped before it started MPI: rank 0 waits for it in MPI_Init
from minilepton.cluster.mpi_direct import init_mpi
print("starting MPI", flush=True)
init_mpi()
"""


@pytest.mark.timeout(60)
def test_sigterm_stops_a_rank_that_waits_in_mpi_init_for_an_exited_peer():
    before = _mpi_files()
    proc, token = _direct(["-c", STARTING])
    assert proc.stdout.readline() == "starting MPI\n"
    time.sleep(0.5)  # inside MPI_Init
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code, _ = _finish(proc, token, before)
    assert code != 0 and time.monotonic() - t0 < 15


def _stall_in_a_group(comm):
    """Ranks {0, 1} and {2, 3} each sum in their group; rank 3 stalls, so rank 2 waits."""
    group = comm.split(comm.rank // 2)
    if comm.rank == 3:
        time.sleep(30)
    group.allreduce(np.ones(3))
    return comm.rank


@pytest.mark.timeout(60)
def test_a_rank_that_stalls_in_a_group_is_named_by_its_job_rank():
    with pytest.raises(WorkerError) as info:
        launch(_stall_in_a_group, 4, backend="mpi", timeout_s=1.5, job_timeout_s=40)
    assert info.value.rank == 3, info.value
    assert re.match(r"worker rank 3 failed: stalled \(rank 2 reports CommError: allreduce on rank "
                    r"0: rank\(s\) \[3\] did not arrive", str(info.value)), info.value
