"""Every notebook of the course runs top to bottom with small settings, and its exercises check.

One kernel per notebook, under ``MINILEPTON_QUICK=1``, runs the notebook as committed (the
answer cells hold ``...``: each check cell must say "not answered yet"), and right after each
check cell, from ``tutorials/solutions/<notebook>.py``:

- the exercise's *mistake* (a plausible wrong answer) and the check again: it must fail with an
  ``AssertionError`` whose message says what is wrong;
- the exercise's *solution* and the check again: it must say "correct".

Figures go to a temporary folder (``MINILEPTON_FIGURES``): a quick run never writes under
``figures/``. ``python tests/test_notebooks.py NOTEBOOK`` runs one notebook this way by hand.
"""

from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path
from unittest import mock

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
SOLUTIONS = TUTORIALS / "solutions"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT_S = 180
SECTION = re.compile(r"^# %% Exercise (\S+?)(?: \((mistake)\))?(?::.*)?$", re.M)


def load_solutions(path: Path) -> dict:
    """``{exercise: {"solution": code, "mistake": code}}`` from a solutions file, whose sections
    start with ``# %% Exercise ID: ...`` (the solution) or ``# %% Exercise ID (mistake): ...``."""
    text = path.read_text()
    heads = list(SECTION.finditer(text))
    found: dict = {}
    for head, nxt in zip(heads, heads[1:] + [None]):
        body = text[head.end():nxt.start() if nxt else len(text)].strip("\n")
        found.setdefault(head.group(1), {})["mistake" if head.group(2) else "solution"] = body
    return found


def exercises(notebook) -> dict:
    """``{exercise: {"exercise": i, "answer": j, "check": k}}``: the cell index of each part."""
    found: dict = {}
    for i, cell in enumerate(notebook.cells):
        ex = cell.metadata.get("exercise")
        if ex is None:
            continue
        tags = cell.metadata.get("tags", [])
        part = "answer" if "answer" in tags else "check" if "check" in tags else "exercise"
        found.setdefault(str(ex), {})[part] = i
    return found


def with_solutions(notebook, solutions: dict):
    """A copy of ``notebook`` with each check followed by mistake + check, solution + check."""
    out = copy.deepcopy(notebook)
    cells = []
    for cell in notebook.cells:
        cells.append(copy.deepcopy(cell))
        if "check" not in cell.metadata.get("tags", []):
            continue
        ex = str(cell.metadata["exercise"])
        for part, tags in (("mistake", ["raises-exception"]), ("solution", [])):
            code = solutions.get(ex, {}).get(part)
            if code is None:
                continue
            cells.append(nbformat.v4.new_code_cell(code, metadata={"exercise": ex,
                                                                  "tags": [part]}))
            check = nbformat.v4.new_code_cell(cell.source, metadata={
                "exercise": ex, "tags": [f"check-{part}", *tags]})
            cells.append(check)
    for i, cell in enumerate(cells):
        cell.id = f"t{i:04d}"
    out.cells = cells
    return out


def execute(notebook, path: Path, figures: Path) -> None:
    env = {"MINILEPTON_QUICK": "1", "MINILEPTON_FIGURES": str(figures), "MPLBACKEND": "Agg",
           "OPENBLAS_NUM_THREADS": "1",  # small matrices; spinning threads hurt
           # the kernel imports the minilepton of this tree, however (or whether) it was installed
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with mock.patch.dict(os.environ, env):  # the kernel inherits them; restored after
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(path.parent)}})
        client.execute()  # raises CellExecutionError naming the failing cell


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _errors(cell) -> list:
    return [o for o in cell.outputs if o.output_type == "error"]


def check_outputs(notebook) -> list[str]:
    """What went wrong in an executed ``with_solutions`` notebook (empty: nothing)."""
    problems = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags, ex = cell.metadata.get("tags", []), cell.metadata.get("exercise")
        errors = _errors(cell)
        if "check-mistake" in tags:
            if not errors or errors[0].ename != "AssertionError" or not errors[0].evalue.strip():
                problems.append(f"exercise {ex}: the check accepts the mistake of the solutions "
                                f"file, or fails without saying why ({[e.ename for e in errors]})")
            continue
        if errors:
            e = errors[0]
            problems.append(f"cell {cell.id} (exercise {ex}, {tags}): {e.ename}: {e.evalue}")
        elif "check" in tags and "not answered yet" not in _text(cell):
            problems.append(f"exercise {ex}: with the answer empty, the check does not say "
                            "'not answered yet'")
        elif "check-solution" in tags and f"Exercise {ex}: correct." not in _text(cell):
            problems.append(f"exercise {ex}: the solution does not pass its check")
    return problems


def run_with_solutions(path: Path, figures: Path):
    notebook = nbformat.read(path, as_version=4)
    solutions = load_solutions(SOLUTIONS / f"{path.stem}.py")
    missing = [ex for ex in exercises(notebook) if "solution" not in solutions.get(ex, {})]
    assert not missing, f"{path.name}: no solution for exercises {missing}"
    extra = sorted(set(solutions) - set(exercises(notebook)))
    assert not extra, f"{path.name}: solutions for exercises it does not have: {extra}"
    run = with_solutions(notebook, solutions)
    execute(run, path, figures)
    return run


def test_the_course_is_there():
    names = [p.name for p in NOTEBOOKS]
    assert "01_autograd_and_logistic_regression.ipynb" in names
    assert "02_mlp_on_fashion_mnist.ipynb" in names
    assert len(names) >= 10, names


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_exercises_check(path, tmp_path):
    run = run_with_solutions(path, tmp_path / "figures")
    problems = check_outputs(run)
    assert not problems, "\n".join(problems)
    assert not (tmp_path / "figures").exists() or all(
        p.suffix == ".png" for p in (tmp_path / "figures").iterdir())


if __name__ == "__main__":  # run one notebook by hand: python tests/test_notebooks.py tutorials/03_collectives.ipynb
    import tempfile
    import time
    for name in sys.argv[1:]:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            executed = run_with_solutions(Path(name).resolve(), Path(tmp) / "figures")
        problems = check_outputs(executed)
        print(f"{name}: {time.perf_counter() - t0:.1f} s;", "ok" if not problems else "\n".join(problems))
