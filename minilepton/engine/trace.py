"""A per-rank timeline of where the time goes, written as one Chrome-trace / Perfetto file.

Each rank's ``Tracer`` records spans: compute (``forward``, ``backward``, ``optimizer``) around
the code that computes, and every communication (``send``, ``recv`` and the collectives) through
the communicator hooks (``Communicator.hooks``). Time inside a step that no span covers is
``idle`` (a pipeline bubble, or waiting that the backend does not report). ``merge`` puts
every rank's spans on one clock (``time.perf_counter``, a system-wide monotonic clock on one
machine) and ``write_chrome_trace`` writes the JSON that chrome://tracing and
https://ui.perfetto.dev open: one process, one thread per rank. ``gantt`` draws the same spans
with matplotlib.

Recording stops after ``max_steps`` training steps so that a long run gives a small file.
"""

from __future__ import annotations

import json
import time

import numpy as np

from ..files import atomic_write_text

COLLECTIVES = ("allreduce", "allgather", "reduce_scatter", "broadcast", "barrier")
COLORS = {"forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868",
          "send": "#8c8c8c", "recv": "#b0b0b0", "collective": "#c44e52", "idle": "#ffffff"}


def category(name: str) -> str:
    """The span's kind: forward, backward, optimizer, send, recv, collective or idle."""
    if name in ("send", "recv", "idle", "forward", "backward", "optimizer"):
        return name
    return "collective" if name in COLLECTIVES else "compute"


class Tracer:
    """Spans of one rank: ``with tracer.span("forward", micro_batch=3): ...``."""

    def __init__(self, rank: int, max_steps: int = 20):
        self.rank, self.max_steps = int(rank), int(max_steps)
        self.spans: list = []  # (name, start_s, end_s, args)
        self.steps: list = []  # (start_s, end_s) of each recorded training step
        self._open: dict = {}
        self.active = True

    def watch(self, *comms) -> None:
        """Record the communication of ``comms`` (each registers this tracer's hook once)."""
        for comm in comms:
            if self._hook not in comm.hooks:
                comm.hooks.append(self._hook)

    def _hook(self, event, op, rank, t_s, nbytes):
        if not self.active:
            return
        if event == "start":
            self._open[op] = t_s
        elif op in self._open:
            self.spans.append((op, self._open.pop(op), t_s, {"bytes": int(nbytes)}))

    def span(self, name: str, **args):
        return _Span(self, name, args)

    def step(self):
        """Context manager around one training step; recording stops after ``max_steps``."""
        return _Step(self)

    def events(self) -> list:
        """This rank's spans plus the idle gaps inside its steps, as plain dicts."""
        out = [{"name": n, "rank": self.rank, "start_s": a, "end_s": b, "args": args}
               for n, a, b, args in self.spans]
        for t0, t1 in self.steps:
            inside = sorted((a, b) for _, a, b, _ in self.spans if a < t1 and b > t0)
            cursor = t0
            for a, b in inside:
                if a > cursor + 1e-6:
                    out.append({"name": "idle", "rank": self.rank, "start_s": cursor,
                                "end_s": a, "args": {}})
                cursor = max(cursor, b)
            if t1 > cursor + 1e-6:
                out.append({"name": "idle", "rank": self.rank, "start_s": cursor, "end_s": t1,
                            "args": {}})
        return sorted(out, key=lambda e: e["start_s"])


class _Span:
    __slots__ = ("args", "name", "t0", "tracer")

    def __init__(self, tracer, name, args):
        self.tracer, self.name, self.args = tracer, name, args

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.tracer.active:
            self.tracer.spans.append((self.name, self.t0, time.perf_counter(), self.args))
        return False


class _Step:
    __slots__ = ("t0", "tracer")

    def __init__(self, tracer):
        self.tracer = tracer

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        tr = self.tracer
        if tr.active:
            tr.steps.append((self.t0, time.perf_counter()))
            tr.active = len(tr.steps) < tr.max_steps
        return False


def gather_events(comm, tracer) -> list | None:
    """Every rank's events on rank 0 (others get None); a collective over ``comm``."""
    mine = np.frombuffer(json.dumps(tracer.events()).encode(), dtype=np.uint8)
    if comm.rank != 0:
        comm.send(np.array([mine.size], dtype=np.int64), 0)
        comm.send(np.ascontiguousarray(mine), 0)
        return None
    events = json.loads(mine.tobytes())
    for src in range(1, comm.world_size):
        size = comm.recv(np.zeros(1, dtype=np.int64), src)
        events += json.loads(comm.recv(np.zeros(int(size[0]), np.uint8), src).tobytes())
    return events


def chrome_trace(events) -> dict:
    """Chrome-trace JSON ("X" complete events, µs from the earliest event; rank = thread)."""
    t0 = min((e["start_s"] for e in events), default=0.0)
    ranks = sorted({e["rank"] for e in events})
    out = [{"name": "thread_name", "ph": "M", "pid": 0, "tid": r, "args": {"name": f"rank {r}"}}
           for r in ranks]
    for e in events:
        out.append({"name": e["name"], "cat": category(e["name"]), "ph": "X", "pid": 0,
                    "tid": e["rank"], "ts": round((e["start_s"] - t0) * 1e6, 3),
                    "dur": round((e["end_s"] - e["start_s"]) * 1e6, 3), "args": e["args"]})
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def write_chrome_trace(events, path: str) -> None:
    atomic_write_text(path, json.dumps(chrome_trace(events)))


def busy_fraction(events, rank: int, names=("forward", "backward")) -> float:
    """Share of rank's step time spent in the spans ``names`` (1 − this is its bubble)."""
    mine = [e for e in events if e["rank"] == rank]
    if not mine:
        return 0.0
    busy = sum(e["end_s"] - e["start_s"] for e in mine if e["name"] in names)
    span = max(e["end_s"] for e in mine) - min(e["start_s"] for e in mine)
    return busy / span if span > 0 else 0.0


def gantt(ax, events, title: str = "", t0: float | None = None, label: str = "rank") -> None:
    """Draw ``events`` on a matplotlib axis: one row per rank, colored by category."""
    t0 = min(e["start_s"] for e in events) if t0 is None else t0
    ranks = sorted({e["rank"] for e in events})
    for e in events:
        cat = category(e["name"])
        if cat == "idle":
            continue
        row = ranks.index(e["rank"])
        ax.broken_barh([((e["start_s"] - t0) * 1e3, (e["end_s"] - e["start_s"]) * 1e3)],
                       (row - 0.4, 0.8), facecolors=COLORS.get(cat, "#999999"),
                       edgecolor="none")
        mb = e["args"].get("micro_batch")
        if mb is not None and cat in ("forward", "backward"):
            ax.text((e["start_s"] + e["end_s"] - 2 * t0) * 500, row, str(mb), ha="center",
                    va="center", fontsize=6, color="white")
    ax.set_yticks(range(len(ranks)), [f"{label} {r}" for r in ranks])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(title)
