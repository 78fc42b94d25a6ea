"""``mpiexec -n P python -m minilepton train``: one P-rank job whose world size is MPI's."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("mpi4py", reason="direct MPI runs need mpi4py (pip install '.[mpi]')")
from minilepton.cluster.mpi_launch import find_mpiexec  # noqa: E402

MPIEXEC = find_mpiexec()
pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install mpich)")]
TRAIN = [sys.executable, "-m", "minilepton", "train", "--epochs", "1", "--hidden", "16",
         "--batch-size", "256"]


@pytest.mark.timeout(90)
def test_mpiexec_runs_one_data_parallel_job(tmp_path):
    out = subprocess.run([MPIEXEC, "-n", "2", *TRAIN, "--metrics-json", str(tmp_path / "m.json")],
                         capture_output=True, text=True, timeout=80, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Epoch 1/1") == 1  # one set of epoch lines, from rank 0
    assert "/step sent" in out.stdout
    metrics = (tmp_path / "m.json").read_text()
    assert '"world_size": 2' in metrics and '"backend": "mpi"' in metrics


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flags, says", [
    (["--workers", "3"], "mpiexec started 2 ranks"),
    (["--max-restarts", "1"], "--max-restarts needs a launcher"),  # mpiexec owns the ranks
])
def test_mpiexec_with_a_run_it_cannot_make_is_one_error_line(flags, says):
    out = subprocess.run([MPIEXEC, "-n", "2", *TRAIN, *flags],
                         capture_output=True, text=True, timeout=50, check=False)
    assert out.returncode == 2, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"minilepton: error: {says}")
    assert "Epoch" not in out.stdout
