"""What every notebook of the course shares: the quick setting, where figures go, exercise checks.

- ``QUICK``: ``MINILEPTON_QUICK=1`` runs a notebook with small settings (the test suite does);
  without it a notebook uses its full settings.
- ``savefig(fig, name)``: a full run saves ``figures/NAME`` in the repository; a quick run saves
  into ``MINILEPTON_FIGURES`` or a temporary folder, never under ``figures/``.
- ``answered(exercise, value)`` and ``passed(exercise)``: the check cell of an exercise runs its
  asserts only once the answer cell holds an answer (``...`` means "not yet"), so a notebook
  runs top to bottom before the reader has answered anything.
"""

from __future__ import annotations

import atexit
import os
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np

QUICK = os.environ.get("MINILEPTON_QUICK") == "1"
REPO = Path(__file__).resolve().parent.parent
REPO_FIGURES = REPO / "figures"


def figures_dir() -> Path:
    """Where this run's figures go (see the module docstring)."""
    if not QUICK:
        return REPO_FIGURES
    chosen = os.environ.get("MINILEPTON_FIGURES")
    if not chosen:  # a folder of this run's own, removed when the run ends
        folder = Path(tempfile.mkdtemp(prefix="minilepton-figures-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return folder
    folder = Path(chosen)
    if folder.resolve() == REPO_FIGURES.resolve() or REPO_FIGURES.resolve() in folder.resolve().parents:
        raise ValueError(f"a quick run does not write under figures/ ({folder})")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


FIGURES = figures_dir()


def setup() -> None:
    """One line saying what this run is: the settings, the cores, the Python and NumPy."""
    import minilepton as ml
    mode = "quick settings (MINILEPTON_QUICK=1)" if QUICK else "full settings"
    print(f"{mode} | {ml.backend.cpu_count()} cores | Python {platform.python_version()} | "
          f"NumPy {np.__version__} | minilepton {ml.__version__}")


def savefig(fig, name: str, dpi: int = 110) -> None:
    """Save ``fig`` as ``name`` in this run's figure folder; say where (full runs only)."""
    fig.savefig(FIGURES / name, dpi=dpi, bbox_inches="tight")
    if not QUICK:
        print(f"saved figures/{name}")


def _empty(value) -> bool:
    if value is Ellipsis:
        return True
    if isinstance(value, (list, tuple)):
        return any(_empty(v) for v in value)
    if isinstance(value, dict):
        return any(_empty(v) for v in value.values())
    return False


def answered(exercise: str, *values) -> bool:
    """False (and a line saying so) while any of ``values`` is still ``...``; True otherwise."""
    if any(_empty(v) for v in values):
        print(f"Exercise {exercise}: not answered yet. Write your answer in the cell above "
              "(replace the ...), run it, then run this cell again.")
        return False
    return True


def passed(exercise: str) -> None:
    print(f"Exercise {exercise}: correct.")
