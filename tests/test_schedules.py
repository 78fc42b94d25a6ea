"""Pipeline schedules are pure plans: checked here without any process."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minilepton.parallel.schedules import (
    BACKWARD,
    FORWARD,
    bubble_fraction,
    diagram,
    gpipe,
    in_flight,
    one_f_one_b,
    plan_bubble,
    replay,
    schedule,
)

sizes = st.tuples(st.integers(1, 12), st.integers(1, 6))  # (micro_batches, stages)
names = st.sampled_from(["gpipe", "1f1b"])


@settings(max_examples=60, deadline=None)
@given(sizes, names)
def test_every_op_once_and_dependencies_respected(mp, name):
    m_count, stages = mp
    plan = schedule(name, m_count, stages)
    at = {(op.micro_batch, op.stage, op.phase): op.step for op in plan}
    assert len(at) == len(plan) == 2 * m_count * stages
    assert set(at) == {(m, s, ph) for m in range(m_count) for s in range(stages)
                       for ph in (FORWARD, BACKWARD)}
    for (m, s, ph), t in at.items():
        if ph == FORWARD and s > 0:
            assert at[(m, s - 1, FORWARD)] < t
        if ph == BACKWARD:
            assert at[(m, s, FORWARD)] < t
            if s < stages - 1:
                assert at[(m, s + 1, BACKWARD)] < t
    busy = [(op.step, op.stage) for op in plan]
    assert len(set(busy)) == len(busy)  # one op per stage per step


@settings(max_examples=60, deadline=None)
@given(sizes)
def test_activation_memory_1f1b_bounded_by_stages(mp):
    m_count, stages = mp
    f1b, gp = schedule("1f1b", m_count, stages), schedule("gpipe", m_count, stages)
    for s in range(stages):
        assert in_flight(f1b, s) == min(stages - s, m_count) <= stages
        assert in_flight(gp, s) == m_count


@settings(max_examples=60, deadline=None)
@given(sizes, names)
def test_bubble_matches_theory(mp, name):
    m_count, stages = mp
    plan = schedule(name, m_count, stages)
    assert max(op.step for op in plan) + 1 == 2 * (m_count + stages - 1)
    assert plan_bubble(plan) == pytest.approx(bubble_fraction(stages, m_count))


def test_generators_are_lazy_and_diagram_reads():
    assert next(iter(gpipe(3, 2))) == (0, 0, 0, FORWARD)
    text = diagram(one_f_one_b(4, 2))
    assert text.splitlines()[1] == "stage 0 F0 F1 .. B0 F2 B1 F3 B2 .. B3"
    assert text.splitlines()[2] == "stage 1 .. F0 B0 F1 B1 F2 B2 F3 B3 .."


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown pipeline schedule"):
        schedule("zigzag", 4, 2)
    with pytest.raises(ValueError, match="at least 1 micro-batch"):
        schedule("gpipe", 0, 2)


@settings(max_examples=30, deadline=None)
@given(sizes, names, st.floats(0.5, 3.0))
def test_replay_with_measured_durations(mp, name, backward_cost):
    """Equal stages reproduce theory for any forward/backward cost ratio; a slow stage makes
    the other stages idle longer."""
    m_count, stages = mp
    plan = schedule(name, m_count, stages)

    def orders(slow_stage=None):
        return [[(op.micro_batch, op.phase,
                  (1.0 if op.phase == FORWARD else backward_cost) * (3 if s == slow_stage else 1))
                 for op in plan if op.stage == s] for s in range(stages)]
    result = replay(orders())
    assert result["bubble"] == pytest.approx(bubble_fraction(stages, m_count))
    assert result["bubble_busiest"] == pytest.approx(result["bubble"])
    assert result["makespan_s"] == pytest.approx((m_count + stages - 1) * (1 + backward_cost))
    if stages > 1:  # the others wait longer (their idle share need not grow: the work does too)
        slow = replay(orders(slow_stage=0))

        def others_idle_s(r):
            return sum(r["makespan_s"] - busy for busy in r["busy_s"][1:])
        assert others_idle_s(slow) > others_idle_s(result) + 1e-9
