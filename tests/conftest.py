"""Shared test fixtures: the communication backends a collective suite runs on, and ``cp``,
the CuPy module for the GPU tests (skipped without a GPU).

``backend`` runs a test once per backend: ``"shm"`` always, ``"mpi"`` when mpi4py and
``mpiexec`` are installed (skipped with the reason otherwise). ``run_job(backend, fn, P, ...)``
launches ``fn`` on that backend; on shm it uses small staging and channel buffers so that
modest arrays already cross many chunk boundaries.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _mpi_missing() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install '.[mpi]')"
    try:
        from minilepton.cluster.mpi_launch import find_mpiexec

        found = find_mpiexec()
    except ImportError:
        found = shutil.which("mpiexec")
    return None if found else "mpiexec not found (pip install mpich)"


MPI_MISSING = _mpi_missing()
BACKENDS = [
    pytest.param("shm", id="shm"),
    pytest.param("mpi", id="mpi", marks=[
        pytest.mark.mpi, pytest.mark.skipif(MPI_MISSING is not None, reason=str(MPI_MISSING))]),
]


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request) -> str:
    """The communication backend under test (session scope: hypothesis-friendly)."""
    return request.param


def small_config():
    """Shm buffers small enough that a few thousand values take many chunks and pieces (the
    channels still hold three messages of 600 float64 values: 8 pieces of 4 KiB)."""
    from minilepton.comm.shm import ShmConfig

    return ShmConfig(stage_depth=3, stage_bytes=1024, channel_slots=8, channel_chunk_bytes=4096,
                     pipeline_bytes=1024, arena_min_bytes=0, split_min_bytes=2048,
                     single_copy=True, single_copy_min_bytes=4096)


def run_job(backend: str, fn, world_size: int, args=(), **kwargs):
    """``launch`` on ``backend`` (a 30 s stall timeout unless given)."""
    from minilepton.cluster import launch

    kwargs.setdefault("timeout_s", 30)
    if backend == "shm":
        kwargs.setdefault("config", small_config())
    return launch(fn, world_size, args=args, backend=backend, **kwargs)


@pytest.fixture(scope="module")
def cp():
    """The cupy module, or a skip (a failure under MINILEPTON_REQUIRE_GPU=1) saying why not."""
    from minilepton import backend

    try:
        backend.resolve_device("gpu")
    except backend.DeviceError as exc:
        if os.environ.get("MINILEPTON_REQUIRE_GPU") == "1":
            pytest.fail(f"MINILEPTON_REQUIRE_GPU=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))
    return backend.namespace("gpu")


def files_in_use(open_files: bool = True) -> set:
    """Paths under /dev/shm some live process maps, and (``open_files``) every path some live
    process holds open: what a file a dead job left behind is not."""
    used = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps") as f:
                used.update(line.split()[-1] for line in f if "/dev/shm/" in line)
            if open_files:
                fds = f"/proc/{pid}/fd"
                used.update(os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds))
        except OSError:
            continue
    return used
