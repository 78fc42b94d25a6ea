"""Run the course's notebooks with their full settings and save each with its outputs.

    python tutorials/execute.py              # every notebook, in order
    python tutorials/execute.py 03 05        # the notebooks whose names start with 03 and 05

Each notebook runs top to bottom in a fresh kernel whose working folder is ``tutorials/``,
without ``MINILEPTON_QUICK``, so that its figures are written under ``figures/``; the answer
cells stay as they are (empty), so each check cell says "not answered yet". The wall time of
each notebook is printed at the end. A failing cell stops that notebook and leaves it unsaved.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 900


def notebooks(prefixes) -> list[Path]:
    found = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]


def execute(path: Path) -> float:
    """Run ``path`` in place with the full settings; the seconds it took."""
    notebook = nbformat.read(path, as_version=4)
    env = dict(os.environ)
    for name in ("MINILEPTON_QUICK", "MINILEPTON_FIGURES", "MPLBACKEND"):
        env.pop(name, None)
    saved = os.environ.copy()
    os.environ.clear()
    os.environ.update(env)
    try:
        t0 = time.perf_counter()
        nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                record_timing=False,
                                resources={"metadata": {"path": str(HERE)}}).execute()
        seconds = time.perf_counter() - t0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    nbformat.write(notebook, path)
    return seconds


def main(argv) -> int:
    times = {}
    for path in notebooks(argv):
        print(f"{path.name} ...", flush=True)
        times[path.name] = execute(path)
        print(f"{path.name}: {times[path.name]:.0f} s", flush=True)
    for name, seconds in times.items():
        print(f"{seconds:7.1f} s  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
