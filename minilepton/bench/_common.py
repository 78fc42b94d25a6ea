"""What several benchmarks share: reading their size lists, and saving what they write."""

from __future__ import annotations

import json
import os


def parse_sizes(workers: str, hidden: str) -> tuple[list[int], list[int]]:
    """``"1,2,4"`` and ``"1024,1024"`` -> sorted distinct world sizes, hidden layer sizes."""
    try:
        return (sorted({int(w) for w in workers.split(",")}),
                [int(h) for h in hidden.split(",") if h])
    except ValueError:
        raise ValueError("--workers and --hidden take comma-separated integers") from None


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure to ``path`` (folders made as needed) and close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def save_json(result: dict, path: str) -> None:
    """Write a benchmark's results as indented JSON to ``path`` (folders made as needed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
