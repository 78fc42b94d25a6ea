"""Pipeline time from the schedule generators themselves: ``schedules.replay`` on op durations.

A flush of M micro-batches over P stages runs each stage's ops in the order the schedule gives
(``schedules.gpipe_order``, ``schedules.one_f_one_b_order``), each forward taking f_s and each
backward b_s seconds on stage s, a message between stages arriving ``latency_s`` after its op
ends. ``replay`` gives the makespan T; the bubble is what the busiest stage waits:

    bubble = T − max_s M·(f_s + b_s)        (for equal stages, T = (M + P − 1)(f + b) + …)

so the bubble is never a separate formula: it is whatever the plan's dependencies cost.

**Long pipelines.** Replaying 2·M·P ops costs time; beyond ``EXACT_OPS`` ops the flush is
replayed at M₁, M₁ + P and M₁ + 2P micro-batches (M₁ = 2P, 4P, … plus (M − M₁) mod P) until
the last two differences agree, and extended by whole periods:
T(M) = T(M₁) + (M − M₁)/P · (T(M₁+P) − T(M₁)). Once the pipeline is full, a plan of equal
stages repeats every P micro-batches, so this is the full replay; with unequal stages the plan
may settle later or repeat with another period, and the extension is within about 1 % of it
(``tests/test_sim.py`` checks both).

**Interleaved stages** (Narayanan et al., 2021): with v model chunks per device the flush takes
(M + (P−1)/v)(f + b); it is replayed as 1F1B over M·v chunk micro-batches of duration f/v and
b/v, which has that timing and v times the messages.

**Activations held** come from the plan too (each stage's order): GPipe holds all M
micro-batches, 1F1B at most P − s on stage s.
"""

from __future__ import annotations

from functools import lru_cache

from ..parallel import schedules

EXACT_OPS = 12000
ORDERS = {"gpipe": schedules.gpipe_order, "1f1b": schedules.one_f_one_b_order}


def _orders(name: str, M: int, fwd, bwd) -> list:
    order = ORDERS[name]
    P = len(fwd)
    return [[(m, phase, fwd[s] if phase == schedules.FORWARD else bwd[s])
             for m, phase in order(M, P, s)] for s in range(P)]


def replay_makespan(name: str, M: int, fwd, bwd, latency_s: float = 0.0) -> float:
    """The makespan of the exact replay (every op of the flush)."""
    return schedules.replay(_orders(name, M, list(fwd), list(bwd)), latency_s)["makespan_s"]


@lru_cache(maxsize=4096)
def _makespan(name: str, M: int, fwd: tuple, bwd: tuple, latency_s: float) -> float:
    P = len(fwd)
    if 2 * M * P <= EXACT_OPS:
        return replay_makespan(name, M, fwd, bwd, latency_s)
    for base in (2, 4, 8, 16):  # wait for the plan to repeat every P micro-batches
        m1 = base * P + (M - base * P) % P
        if m1 + 2 * P > M:
            break
        t1, t2, t3 = (replay_makespan(name, m, fwd, bwd, latency_s) for m in (m1, m1 + P, m1 + 2 * P))
        if abs((t3 - t2) - (t2 - t1)) <= 1e-9 * t3:
            break
    else:
        return t1 + (M - m1) / P * (t2 - t1)
    if m1 + 2 * P > M:
        return replay_makespan(name, M, fwd, bwd, latency_s)
    return t1 + (M - m1) / P * (t2 - t1)


def flush(name: str, M: int, fwd, bwd, latency_s: float = 0.0, virtual: int = 1) -> dict:
    """One flush of ``M`` micro-batches: ``makespan_s``, ``busy_s`` (the busiest stage's work)
    and ``bubble_s`` = makespan − busy. ``fwd``/``bwd``: seconds per micro-batch per stage."""
    if name not in ORDERS:
        raise ValueError(f"unknown pipeline schedule {name!r}; choose one of {', '.join(ORDERS)}")
    fwd, bwd = [float(x) for x in fwd], [float(x) for x in bwd]
    busy = M * max(f + b for f, b in zip(fwd, bwd))
    if len(fwd) == 1:
        return {"makespan_s": busy, "busy_s": busy, "bubble_s": 0.0}
    if virtual > 1:
        name, M = "1f1b", M * virtual
        fwd, bwd = [f / virtual for f in fwd], [b / virtual for b in bwd]
    makespan = _makespan(name, int(M), tuple(fwd), tuple(bwd), float(latency_s))
    return {"makespan_s": makespan, "busy_s": busy, "bubble_s": max(makespan - busy, 0.0)}


@lru_cache(maxsize=4096)
def held(name: str, M: int, P: int, stage: int = 0, virtual: int = 1) -> float:
    """Micro-batches whose activations ``stage`` holds at once, read from its order in the plan
    (each forward adds one, each backward frees one; ``schedules.in_flight`` of the clocked plan
    counts the same, since a stage runs its order one op after another): GPipe M, 1F1B P − s.
    With v interleaved chunks the first device holds P·(1 + (P−1)/(P·v)) micro-batches of its
    layers (Narayanan et al., 2021, §2.2.2)."""
    if P == 1:
        return 1.0
    if virtual > 1:
        return min(M, P - stage) * (1 + (P - 1) / (P * virtual))
    count = peak = 0
    for _, phase in ORDERS[name](M, P, stage):
        count += 1 if phase == schedules.FORWARD else -1
        peak = max(peak, count)
    return float(peak)
