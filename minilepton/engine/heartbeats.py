"""The heartbeat table of a supervised run: one row per rank in a small file both sides map.

    row r = (unix time of rank r's last progress, 1 while it waits inside a collective, its pid)

Workers write their row (``hooks.Heartbeat``: after every step and every collective); the
supervisor's ``restarts.Watchdog`` reads it. A rank whose time stands still while it is *not*
waiting on its peers has stalled; ranks waiting in a collective for it are merely blocked.
"""

from __future__ import annotations

import os

import numpy as np

COLUMNS = 3


def heartbeats(run_dir: str, world_size: int, mode: str = "r") -> np.ndarray:
    """The (world_size, 3) float64 table in ``run_dir`` (``mode="w+"`` creates it, zeroed)."""
    path = os.path.join(run_dir, "heartbeats")
    return np.memmap(path, dtype=np.float64, mode=mode, shape=(world_size, COLUMNS))
