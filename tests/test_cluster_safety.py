"""Safe files and clean supervision: no file another user planted redirects or deletes what a run
touches; bad environment values are one line naming the variable; a stalled or broken worker is
named, and an interrupted MPI job leaves nothing behind.

The attacks run as another user (``nobody``) where the tests run as root, and are skipped
otherwise, with the reason.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import tempfile
import time

import numpy as np
import pytest

import minilepton as ml
from minilepton.cluster import launch
from minilepton.cluster.mpi_direct import is_segment, unlink_segments
from minilepton.cluster.mpi_launch import _JOB_PREFIX, _sweep_dead_jobs, find_mpiexec
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
