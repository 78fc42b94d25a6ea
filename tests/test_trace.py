"""The timeline: spans, idle gaps, Chrome-trace JSON, the Gantt drawing, and ``--trace``."""

import json
import time

import matplotlib
import numpy as np
import pytest

from minilepton.comm.base import Communicator
from minilepton.engine.trace import Tracer, busy_fraction, category, chrome_trace, gantt

matplotlib.use("Agg")


class _LoopbackComm(Communicator):
    """One rank whose all-reduce does nothing but report itself (to exercise the hooks)."""

    def allreduce(self, x, op="sum", algorithm=None):
        with self._timed("allreduce", x.nbytes, 0):
            time.sleep(0.002)
        return x


def test_spans_hooks_and_idle_gaps():
    tracer = Tracer(rank=3, max_steps=2)
    comm = _LoopbackComm(0, 1)
    tracer.watch(comm)
    tracer.watch(comm)  # watching twice registers one hook
    assert len(comm.hooks) == 1
    for _ in range(3):
        with tracer.step():
            with tracer.span("forward", micro_batch=0):
                time.sleep(0.002)
            time.sleep(0.003)  # nothing recorded here: idle
            comm.allreduce(np.zeros(8))
    events = tracer.events()
    names = [e["name"] for e in events]
    assert names.count("forward") == 2 and names.count("allreduce") == 2  # stopped after 2 steps
    assert names.count("idle") >= 2 and all(e["rank"] == 3 for e in events)
    idle = [e for e in events if e["name"] == "idle"]
    assert all(e["end_s"] > e["start_s"] for e in idle)
    assert next(e["args"] for e in events if e["name"] == "allreduce") == {"bytes": 64}
    assert 0 < busy_fraction(events, 3) < 1
    assert category("allreduce") == "collective" and category("recv") == "recv"


def test_chrome_trace_format_and_gantt():
    events = [{"name": "forward", "rank": r, "start_s": 10.0 + r, "end_s": 10.5 + r,
               "args": {"micro_batch": 0}} for r in range(2)]
    events.append({"name": "send", "rank": 0, "start_s": 10.5, "end_s": 10.6, "args": {}})
    trace = chrome_trace(events)
    body = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["tid"] for e in body} == {0, 1}
    assert min(e["ts"] for e in body) == 0 and body[0]["dur"] == pytest.approx(5e5)
    assert [e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M"] == ["rank 0",
                                                                                    "rank 1"]
    json.dumps(trace)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    gantt(ax, events, "two ranks", label="stage")
    assert len(ax.collections) == 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["stage 0", "stage 1"]
    plt.close(fig)


@pytest.mark.timeout(120)
def test_trace_flag_writes_one_file_for_the_job(tmp_path):
    from minilepton.engine.config import TrainConfig
    from minilepton.engine.run import train as run
    rng = np.random.default_rng(0)
    arrays = (rng.random((64, 12), dtype=np.float32), rng.integers(0, 10, 64),
              rng.random((20, 12), dtype=np.float32), rng.integers(0, 10, 20))
    path = tmp_path / "out.json"
    cfg = TrainConfig(hidden=(16, 16), epochs=1, batch_size=16, pp=2, micro_batches=4,
                      schedule="1f1b", trace=str(path), verbose=False)
    metrics = run(cfg, arrays=arrays, timeout_s=100)
    assert metrics["world_size"] == 2
    events = json.loads(path.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {0, 1}
    names = {e["name"] for e in spans}
    assert {"forward", "backward", "send", "recv", "broadcast", "optimizer"} <= names
    forwards = [e for e in spans if e["name"] == "forward" and e["tid"] == 1]
    assert len(forwards) == 4 * 4  # 4 steps × 4 micro-batches on the last stage
