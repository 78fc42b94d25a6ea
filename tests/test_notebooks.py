"""Every notebook in tutorials/ runs top to bottom under the quick setting (MINILEPTON_QUICK=1).

Figures go to a temporary folder (MINILEPTON_FIGURES), so the tests never touch ``figures/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT_S = 120


def test_the_tutorials_are_there():
    names = [p.name for p in NOTEBOOKS]
    assert "01_autograd_and_logistic_regression.ipynb" in names
    assert "02_mlp_on_fashion_mnist.ipynb" in names


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINILEPTON_QUICK", "1")
    monkeypatch.setenv("MINILEPTON_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")  # small matrices; spinning threads hurt
    # the kernel imports the minilepton of this tree, however (or whether) it was installed
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT),
                                                                   os.environ.get("PYTHONPATH")])))
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
