"""Safe files and clean supervision: no file another user planted redirects or deletes what a run
touches; bad environment values are one line naming the variable; a stalled or broken worker is
named, and an interrupted MPI job leaves nothing behind.

The attacks run as another user (``nobody``) where the tests run as root, and are skipped
otherwise, with the reason.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import minilepton as ml
from minilepton import environment
from minilepton.cluster import WorkerError, launch, logs
from minilepton.cluster.mpi_launch import _JOB_PREFIX, _sweep_dead_jobs, find_mpiexec
from minilepton.cluster.mpi_segments import is_segment, unlink_segments
from minilepton.engine.config import TrainConfig

MPI_MISSING = ("mpi4py is not installed" if __import__("importlib").util.find_spec("mpi4py")
               is None else None if find_mpiexec() else "mpiexec not found (pip install mpich)")
needs_mpi = [pytest.mark.mpi, pytest.mark.skipif(MPI_MISSING is not None, reason=str(MPI_MISSING))]


def _other_user():
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to act as")


def as_other_user(act) -> None:
    """Call ``act()`` as user nobody (the attacker), in a forked child (this Python's files may
    not be readable by that user, so nothing is executed anew)."""
    user = _other_user()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            act()
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"{act} failed as {user.pw_name}"


def _shared_folder():
    """A world-writable sticky folder, as /tmp is (tmp_path is private to root)."""
    path = tempfile.mkdtemp(prefix="minilepton-test-shared-")
    os.chmod(path, 0o1777)
    return path


def _ranks(comm):
    return comm.rank


# ---- security item 1: the MPI launcher's sweep of dead jobs
@pytest.mark.timeout(60)
@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_mpi, id="mpi")])
def test_another_users_job_folder_cannot_make_the_sweep_delete_a_file(tmp_path, _):
    victim = tmp_path / "victim.txt"
    victim.write_text("root's file")
    evil = os.path.join(tempfile.gettempdir(), _JOB_PREFIX + secrets.token_hex(4))
    old = time.time() - 300
    try:
        def plant():
            os.mkdir(evil)
            with open(os.path.join(evil, "x.shm"), "w") as f:
                f.write(str(victim))
            os.utime(evil, (old, old))

        as_other_user(plant)
        assert launch(_ranks, 2, backend="mpi", job_timeout_s=50) == [0, 1]
        assert victim.read_text() == "root's file"
        assert os.path.isdir(evil)  # not ours: not swept either
    finally:
        shutil.rmtree(evil, ignore_errors=True)


def test_the_sweep_unlinks_only_this_users_mpich_segments(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    token = secrets.token_hex(4)
    segment = f"/dev/shm/mpich_shm_test{token}"
    link = f"/dev/shm/mpich_shm_link{token}"
    stale = os.path.join(tempfile.gettempdir(), _JOB_PREFIX + token)
    os.mkdir(stale, 0o700)
    try:
        open(segment, "w").close()
        os.symlink(victim, link)
        listed = [str(victim), f"/dev/shm/../{victim}", link, segment, "/dev/shm/mpich_shm_/x"]
        with open(os.path.join(stale, "rank0.shm"), "w") as f:
            f.write("\n".join(listed))
        os.utime(stale, (time.time() - 300,) * 2)
        _sweep_dead_jobs()
        assert not os.path.exists(stale) and not os.path.exists(segment)
        assert victim.read_text() == "keep" and os.path.islink(link)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        for path in (segment, link):
            if os.path.lexists(path):
                os.unlink(path)


def test_a_segment_another_user_owns_is_never_unlinked():
    user = _other_user()
    segment = f"/dev/shm/mpich_shm_test{secrets.token_hex(4)}"
    try:
        as_other_user(lambda: open(segment, "w").close())
        assert not is_segment(segment) and is_segment(segment, uid=user.pw_uid)
        unlink_segments([segment])
        assert os.path.exists(segment)
    finally:
        os.unlink(segment)


# ---- security item 2: a planted link at the name the old writer used
@pytest.mark.timeout(60)
def test_a_planted_link_does_not_redirect_the_metrics_or_the_saved_parameters(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("root's file")
    shared = _shared_folder()
    metrics, save = os.path.join(shared, "m.json"), os.path.join(shared, "w.npz")
    try:  # the old code wrote PATH.tmp-<pid> with a plain open, in this (the writing) process
        pid = os.getpid()
        as_other_user(lambda: [os.symlink(victim, f"{p}.tmp-{pid}") for p in (metrics, save)])
        rng = np.random.default_rng(0)
        arrays = (rng.random((64, 6)), rng.integers(0, 3, 64), rng.random((16, 6)),
                  rng.integers(0, 3, 16))
        ml.train(TrainConfig(hidden=(4,), epochs=1, batch_size=16, verbose=False,
                             metrics_json=metrics, save=save), arrays=arrays)
        assert victim.read_text() == "root's file"
        for path in (metrics, save):
            assert os.path.isfile(path) and not os.path.islink(path)
            assert os.path.islink(f"{path}.tmp-{pid}")  # planted, and left unfollowed
            assert os.stat(path).st_uid == 0 and os.stat(path).st_mode & 0o077 == 0
    finally:
        shutil.rmtree(shared)


# ---- inputs: environment variables and worker set-up
BAD_ENVIRONMENT = [("MINILEPTON_COMM_TIMEOUT_S", v) for v in ("nan", "-1", "0", "abc", "inf")] + [
    ("MINILEPTON_ARENA_BYTES", v) for v in ("abc", "0", "-5", "1.5XB")] + [
    ("MINILEPTON_VERBOSE", "yes"), ("LOCAL_RANK", "-1"), ("MINILEPTON_DATA", __file__)]


@pytest.mark.parametrize(("name", "value"), BAD_ENVIRONMENT)
def test_a_bad_environment_value_is_refused_in_one_line_naming_the_variable(name, value):
    with pytest.raises(environment.BadEnvironment) as info:
        environment.check({name: value})
    assert f"{name}={value!r}" in str(info.value) and "\n" not in str(info.value)


def test_good_environment_values_are_read():
    assert environment.read("MINILEPTON_COMM_TIMEOUT_S", environ={"x": "1"}) is None
    good = {"MINILEPTON_COMM_TIMEOUT_S": "2.5", "MINILEPTON_ARENA_BYTES": "512MiB",
            "MINILEPTON_VERBOSE": "0", "LOCAL_RANK": "3", "MINILEPTON_DATA": "/nonexistent"}
    environment.check(good)
    assert environment.read("MINILEPTON_ARENA_BYTES", environ=good) == 512 << 20
    assert environment.read("MINILEPTON_COMM_TIMEOUT_S", environ=good) == 2.5


def test_every_variable_the_package_names_is_checked():
    package = pathlib.Path(ml.__file__).parent
    named = {m for path in package.rglob("*.py")
             for m in re.findall(r"\b(MINILEPTON_[A-Z_]+[A-Z])\b", path.read_text())}
    assert named <= set(environment.VARIABLES), named - set(environment.VARIABLES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["shm", pytest.param("mpi", marks=needs_mpi)])
def test_the_launcher_refuses_bad_input_before_any_worker_starts(backend, monkeypatch, tmp_path,
                                                                 capfd):
    from minilepton.cli import main
    monkeypatch.setenv("MINILEPTON_COMM_TIMEOUT_S", "nan")
    with pytest.raises(environment.BadEnvironment, match="MINILEPTON_COMM_TIMEOUT_S"):
        launch(_ranks, 2, backend=backend)
    monkeypatch.delenv("MINILEPTON_COMM_TIMEOUT_S")
    a_file = tmp_path / "a-file"
    a_file.touch()
    with pytest.raises(ValueError, match="is a file"):
        launch(_ranks, 2, backend=backend, log_dir=str(a_file))
    monkeypatch.setenv("MINILEPTON_ARENA_BYTES", "abc")
    code = main(["train", "--workers", "2", "--epochs", "1", "--hidden", "8", "--quiet",
                 "--backend", backend])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "MINILEPTON_ARENA_BYTES='abc'" in err[0], err


@pytest.mark.timeout(60)
def test_a_worker_that_fails_while_setting_up_is_named_in_one_line(monkeypatch, capfd):
    def broken(*_):
        raise OSError("no log for you")

    monkeypatch.setattr(logs, "setup_worker", broken)  # fork: the workers inherit it
    with pytest.raises(WorkerError, match=r"worker rank \d failed: OSError: no log for you"):
        launch(_ranks, 2, start_method="fork")
    assert "Traceback" not in capfd.readouterr().err


# ---- supervision: the stalled rank is named; an interrupted MPI job leaves nothing
def _stall_rank0(comm):
    x = np.ones(4)
    comm.allreduce(x)
    if comm.rank == 0:
        time.sleep(30)  # stopped by the launcher long before
    comm.allreduce(x)


@pytest.mark.timeout(60)
def test_a_stall_is_blamed_on_the_rank_that_stalled_not_the_one_that_noticed():
    with pytest.raises(WorkerError) as info:
        launch(_stall_rank0, 3, timeout_s=3)  # (1 s could expire while a busy machine starts)
    assert info.value.rank == 0
    assert re.match(r"worker rank 0 failed: stalled \(rank [12] reports CommError", str(info.value))
    assert "rank(s) [0] did not arrive" in str(info.value)


_INTERRUPTED = """
import time
from minilepton.cluster import launch
from minilepton.cluster.mpi_segments import mpi_segments

def wait(comm):
    if comm.rank == 0:
        job_dir = open("/proc/self/cmdline").read().split("\\0")[-2]  # mpi_worker's DIR
        print("job", job_dir, *mpi_segments(), flush=True)
    time.sleep(60)

if __name__ == "__main__":
    launch(wait, 2, backend="mpi")
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_mpi, id="mpi")])
def test_a_signal_to_the_mpi_launcher_stops_every_rank_and_leaves_no_file(sig, tmp_path, _):
    script = tmp_path / "job.py"
    script.write_text(_INTERRUPTED)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[:1] == ["job"], line
        job_dir, files = line[1], line[2:]
        assert os.path.isdir(job_dir) and any("mpich_shm_" in f for f in files), files
        proc.send_signal(sig)
        assert proc.wait(30) == (143 if sig == signal.SIGTERM else -signal.SIGINT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not os.path.exists(job_dir)
    assert not [f for f in files if os.path.exists(f)]
    ranks = [pid for pid in filter(str.isdigit, os.listdir("/proc"))
             if job_dir.encode() in _cmdline(pid)]
    assert not ranks, ranks


def _cmdline(pid) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
