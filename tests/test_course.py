"""The tutorials are a course: every subject in order, each notebook committed with the outputs
of one full run, exercises that check the reader, further reading, a glossary, and figures that
are in the repository. Nothing here runs a notebook (``test_notebooks.py`` does); these checks
read the committed files, so they take a second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
SUBJECTS = {"00": "why distribute", "01": "autograd", "02": "the MLP", "03": "collectives",
            "04": "data parallelism", "05": "communication and load balancing",
            "06": "tensor and pipeline parallelism", "07": "memory", "08": "fault tolerance",
            "09": "scale", "10": "GPUs"}
CJK = re.compile(r"[\u4e00-\u9fff]")
IDS = [p.stem for p in NOTEBOOKS]


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def text_of(output: dict) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


def markdown(path: Path) -> str:
    return "\n".join(source(c) for c in cells(path) if c["cell_type"] == "markdown")


def test_every_subject_has_one_notebook_in_order():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == sorted(SUBJECTS), f"the course is {sorted(SUBJECTS)}, the notebooks {numbers}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_holds_the_outputs_of_one_full_run(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, (f"{path.name}: {counts.count(None)} code cells were never run; "
                                "run `python tutorials/execute.py` and commit the result")
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: cells ran out of order or in several sessions: {counts}")
    errors = [(i, o.get("ename")) for i, c in enumerate(code) for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: error outputs in code cells {errors}"
    first = "".join(text_of(o) for o in code[0].get("outputs", []))
    assert "full settings" in first, (f"{path.name}: the committed outputs are not those of a "
                                      f"full run (its first cell printed {first!r})")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_has_checked_exercises_with_solutions(path):
    all_cells = cells(path)
    parts: dict = {}
    for i, cell in enumerate(all_cells):
        ex = cell.get("metadata", {}).get("exercise")
        if ex is None:
            continue
        tags = cell["metadata"].get("tags", [])
        kind = "answer" if "answer" in tags else "check" if "check" in tags else cell["cell_type"]
        parts.setdefault(str(ex), {})[kind] = i
    assert len(parts) >= 3, f"{path.name} has {len(parts)} exercises; the course asks for 3"
    number = str(int(path.name[:2]))
    solutions = (TUTORIALS / "solutions" / f"{path.stem}.py").read_text()
    for ex, where in parts.items():
        assert ex.split(".")[0] == number, f"{path.name}: exercise {ex} is numbered for another notebook"
        assert set(where) == {"markdown", "answer", "check"}, f"{path.name}, exercise {ex}: {where}"
        assert where["markdown"] < where["answer"] < where["check"], f"{path.name}, exercise {ex}"
        heading = source(all_cells[where["markdown"]])
        assert heading.startswith(f"### Exercise {ex}"), f"{path.name}: {heading[:40]!r}"
        assert "..." in source(all_cells[where["answer"]]), f"{path.name}, {ex}: the answer cell is filled in"
        check = source(all_cells[where["check"]])
        assert f'course.answered("{ex}"' in check and f'course.passed("{ex}")' in check \
            and "assert" in check, f"{path.name}, exercise {ex}: the check cell does not check"
        out = "".join(text_of(o) for o in all_cells[where["check"]].get("outputs", []))
        assert not out or "not answered yet" in out, f"{path.name}, {ex}: committed with an answer"
        assert re.search(rf"^# %% Exercise {re.escape(ex)}:", solutions, re.M), \
            f"no solution to exercise {ex} in tutorials/solutions/{path.stem}.py"
        assert re.search(rf"^# %% Exercise {re.escape(ex)} \(mistake\)", solutions, re.M), \
            f"no wrong answer for the check of exercise {ex} to reject"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_the_notebook_has_further_reading_and_a_glossary(path):
    text = markdown(path)
    assert "## Further reading" in text, f"{path.name}: no further reading"
    glossary = text.split("## Glossary", 1)
    assert len(glossary) == 2, f"{path.name}: no glossary"
    rows = [line for line in glossary[1].splitlines() if line.startswith("|") and CJK.search(line)]
    assert len(rows) >= 8, f"{path.name}: the glossary has {len(rows)} English ↔ Chinese rows"


def test_the_course_cites_the_field_and_names_its_terms():
    text = "\n".join(markdown(p) for p in NOTEBOOKS)
    for work in ("DistBelief", "Goyal", "GPipe", "PipeDream", "Megatron-LM", "ZeRO", "NCCL",
                 "d2l.ai", "Ultra-Scale Playbook"):
        assert work in text, f"the course's further reading never names {work}"
    for term in ("数据并行", "模型并行", "流水线并行", "张量并行", "全归约"):
        assert term in text, f"no glossary gives {term}"


def _saved_figures(path: Path) -> set[str]:
    names = set()
    for cell in cells(path):
        text = source(cell)
        names |= set(re.findall(r"course\.savefig\(\w+,\s*\"([^\"]+)\"", text))
        if cell["cell_type"] == "markdown":
            names |= set(re.findall(r"figures/([\w.\-]+\.png)", text))
    return names


def _tracked_figures() -> set[str] | None:
    try:
        out = subprocess.run(["git", "ls-files", "figures"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {Path(line).name for line in out.splitlines()} if out else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_figure_the_notebook_shows_is_in_the_repository(path):
    names = _saved_figures(path)
    tracked = _tracked_figures()
    if tracked is None:
        pytest.skip("not a git checkout")
    missing = sorted(n for n in names if n not in tracked)
    assert not missing, f"{path.name} saves figures that git does not track: {missing}"
    outputs = "".join(text_of(o) for c in cells(path) if c["cell_type"] == "code"
                      for o in c.get("outputs", []))
    for name in names:
        if not name.startswith(path.name[:2] + "_"):
            continue
        assert f"saved figures/{name}" in outputs, f"{path.name}: figures/{name} was not made by the committed run"


def test_a_quick_run_never_writes_under_figures(tmp_path):
    probe = ("import course, pathlib; "
             "print(course.FIGURES.resolve()); "
             "assert course.REPO_FIGURES.resolve() not in [course.FIGURES.resolve(), *course.FIGURES.resolve().parents]")
    env = {k: v for k, v in os.environ.items() if k != "MINILEPTON_FIGURES"}
    env["MINILEPTON_QUICK"] = "1"
    ok = subprocess.run([sys.executable, "-c", probe], cwd=TUTORIALS, env=env, capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stderr
    env["MINILEPTON_FIGURES"] = str(ROOT / "figures" / "sub")
    refused = subprocess.run([sys.executable, "-c", "import course"], cwd=TUTORIALS, env=env,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and "does not write under figures" in refused.stderr, \
        refused.stderr


def test_the_docs_and_the_readme_point_into_the_course():
    index = (ROOT / "docs" / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"tutorials/{path.name}" in index, f"docs/README.md does not list {path.name}"
    readme = (ROOT / "README.md").read_text()
    order = readme.split("## Reading order", 1)[1].split("\n## ", 1)[0]
    assert "tutorials/00_why_distribute.ipynb" in order, "README's reading order skips the course"
