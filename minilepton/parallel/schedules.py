"""Pipeline schedules as pure functions: which stage runs which micro-batch at which step.

A schedule is a generator of ``Op(step, stage, micro_batch, phase)`` with ``phase`` in
{"forward", "backward"}; it touches no process, tensor or clock, so it can be printed, drawn
and tested on its own. Every op takes one unit step; an op may run once the ops it depends on
finished at an earlier step: forward (m, s) after forward (m, s−1), backward (m, s) after
backward (m, s+1) and after forward (m, s). Each stage keeps its own order of ops; ``clock``
turns those orders into steps (as early as the dependencies allow).

GPipe (Huang et al., 2019) runs every forward, then every backward; a stage holds all M
micro-batches' activations. 1F1B (PipeDream-Flush, Narayanan et al., 2021) lets stage s run
P−1−s warm-up forwards, then alternates one forward with one backward, so it holds at most
P−s micro-batches. Both take 2(M+P−1) steps, of which stage s is idle in 2(P−1):
the bubble fraction (P−1)/(M+P−1).

>>> print(diagram(one_f_one_b(4, 2)))
step     0  1  2  3  4  5  6  7  8  9
stage 0 F0 F1 .. B0 F2 B1 F3 B2 .. B3
stage 1 .. F0 B0 F1 B1 F2 B2 F3 B3 ..
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

FORWARD, BACKWARD = "forward", "backward"


class Op(NamedTuple):
    step: int
    stage: int
    micro_batch: int
    phase: str  # "forward" | "backward"


def _check(micro_batches: int, stages: int) -> None:
    if int(micro_batches) < 1 or int(stages) < 1:
        raise ValueError(f"a pipeline needs at least 1 micro-batch and 1 stage, "
                         f"not {micro_batches} micro-batches and {stages} stages")


def gpipe_order(micro_batches: int, stages: int, stage: int) -> list:
    """GPipe on one stage: F0 … F(M−1), then B0 … B(M−1)."""
    return ([(m, FORWARD) for m in range(micro_batches)]
            + [(m, BACKWARD) for m in range(micro_batches)])


def one_f_one_b_order(micro_batches: int, stages: int, stage: int) -> list:
    """1F1B on one stage: P−1−s warm-up forwards, then F/B alternating, then the last B's."""
    warmup = min(stages - 1 - stage, micro_batches)
    order = [(m, FORWARD) for m in range(warmup)]
    for i in range(micro_batches - warmup):
        order += [(warmup + i, FORWARD), (i, BACKWARD)]
    order += [(m, BACKWARD) for m in range(micro_batches - warmup, micro_batches)]
    return order


def clock(orders: list) -> Iterator[Op]:
    """Give each stage's ordered ops the earliest step their dependencies allow.

    ``orders[s]`` is stage s's list of (micro_batch, phase). Yields ops sorted by (step, stage).
    Raises ValueError if the orders can never finish (a dependency cycle).
    """
    stages = len(orders)
    done: dict = {}  # (micro_batch, stage, phase) -> step it ran at
    cursor = [0] * stages
    step = 0
    while any(cursor[s] < len(orders[s]) for s in range(stages)):
        ran = []
        for s in range(stages):
            if cursor[s] == len(orders[s]):
                continue
            m, phase = orders[s][cursor[s]]
            if phase == FORWARD:
                deps = [(m, s - 1, FORWARD)] if s > 0 else []
            else:
                deps = [(m, s, FORWARD)] + ([(m, s + 1, BACKWARD)] if s < stages - 1 else [])
            if all(done.get(d, step) < step for d in deps):
                ran.append(Op(step, s, m, phase))
        if not ran:
            raise ValueError(f"the stage orders deadlock at step {step}")
        for op in ran:
            done[(op.micro_batch, op.stage, op.phase)] = step
            cursor[op.stage] += 1
            yield op
        step += 1


def gpipe(micro_batches: int, stages: int) -> Iterator[Op]:
    """The GPipe plan: all forwards (a diagonal wave), then all backwards."""
    _check(micro_batches, stages)
    return clock([gpipe_order(micro_batches, stages, s) for s in range(stages)])


def one_f_one_b(micro_batches: int, stages: int) -> Iterator[Op]:
    """The 1F1B plan: warm-up forwards, one-forward-one-backward steady state, cool-down."""
    _check(micro_batches, stages)
    return clock([one_f_one_b_order(micro_batches, stages, s) for s in range(stages)])


SCHEDULES = {"gpipe": gpipe, "1f1b": one_f_one_b}


def schedule(name: str, micro_batches: int, stages: int) -> list:
    """The plan of the schedule called ``name`` ("gpipe" or "1f1b") as a list of ops."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {name!r}; "
                         f"choose one of {', '.join(SCHEDULES)}")
    return list(SCHEDULES[name](micro_batches, stages))


def bubble_fraction(stages: int, micro_batches: int) -> float:
    """Theory: the idle share of a pipeline's time, (P−1)/(M+P−1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def plan_bubble(plan) -> float:
    """Idle share of a plan: 1 − busy slots / (stages × steps)."""
    plan = list(plan)
    stages = 1 + max(op.stage for op in plan)
    steps = 1 + max(op.step for op in plan)
    return 1.0 - len(plan) / (stages * steps)


def in_flight(plan, stage: int) -> int:
    """Most micro-batches whose activations ``stage`` holds at once (forwarded, not yet back)."""
    held = peak = 0
    for op in sorted((op for op in plan if op.stage == stage), key=lambda op: op.step):
        held += 1 if op.phase == FORWARD else -1
        peak = max(peak, held)
    return peak


def replay(orders, latency_s: float = 0.0) -> dict:
    """Time stage orders with measured durations on an ideal clock (one device per stage).

    ``orders[s]`` is stage s's executed list of (micro_batch, phase, seconds). Each op starts when
    its stage is free and its dependencies have finished (plus ``latency_s`` for a message from
    another stage). Returns the makespan, each stage's busy seconds, ``bubble`` =
    1 − Σ busy / (P × makespan) (the idle share the same work would have without a shared CPU;
    it includes the cost of unequal stages), ``bubble_busiest`` = 1 − max busy / makespan (the
    busiest stage's idle share: the fill-and-drain bubble alone), and ``spans``:
    (stage, micro_batch, phase, start_s, end_s) of every op.
    """
    stages = len(orders)
    finish: dict = {}
    spans = []
    free = [0.0] * stages
    cursor = [0] * stages
    while any(cursor[s] < len(orders[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            while cursor[s] < len(orders[s]):
                m, phase, seconds = orders[s][cursor[s]]
                if phase == FORWARD:
                    deps = [((m, s - 1, FORWARD), latency_s)] if s > 0 else []
                else:
                    deps = [((m, s, FORWARD), 0.0)]
                    if s < stages - 1:
                        deps.append(((m, s + 1, BACKWARD), latency_s))
                if any(d not in finish for d, _ in deps):
                    break
                start = max([free[s]] + [finish[d] + lag for d, lag in deps])
                free[s] = finish[(m, s, phase)] = start + seconds
                spans.append((s, m, phase, start, start + seconds))
                cursor[s] += 1
                progressed = True
        if not progressed:
            raise ValueError("the stage orders deadlock")
    makespan = max(free)
    busy = [sum(op[2] for op in order) for order in orders]
    if makespan <= 0:
        return {"makespan_s": 0.0, "busy_s": busy, "bubble": 0.0, "bubble_busiest": 0.0,
                "spans": spans}
    return {"makespan_s": makespan, "busy_s": busy, "spans": spans,
            "bubble": 1.0 - sum(busy) / (stages * makespan),
            "bubble_busiest": 1.0 - max(busy) / makespan}


def diagram(plan) -> str:
    """ASCII chart: one row per stage, one column per step, ``F3``/``B3`` or ``..`` (idle)."""
    plan = list(plan)
    stages = 1 + max(op.stage for op in plan)
    steps = 1 + max(op.step for op in plan)
    width = max(2, len(str(max(op.micro_batch for op in plan))) + 1)
    grid = [["." * width] * steps for _ in range(stages)]
    for op in plan:
        grid[op.stage][op.step] = f"{op.phase[0].upper()}{op.micro_batch}".rjust(width)
    label = len(f"stage {stages - 1}")
    lines = ["step".ljust(label) + " " + " ".join(str(t).rjust(width) for t in range(steps))]
    lines += [f"stage {s}".ljust(label) + " " + " ".join(row) for s, row in enumerate(grid)]
    return "\n".join(lines)
