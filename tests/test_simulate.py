"""The simulated cluster: the link model's arithmetic, profiles, parsing, node speed factors,
and a communicator that makes each operation last as long as the link would."""

from __future__ import annotations

import numpy as np
import pytest

from minilepton.cluster import launch, simulate
from minilepton.cluster.simulate import PROFILES, LinkModel, link_model


def test_link_time_is_latency_per_message_plus_bytes_over_bandwidth():
    link = LinkModel(latency_us=50.0, bandwidth_gbps=1.0)
    assert link.seconds(1, 0) == pytest.approx(50e-6)
    assert link.seconds(2, 125_000_000) == pytest.approx(100e-6 + 1.0)
    # ring all-reduce of N bytes on P ranks: 2(P-1) messages, 2(P-1)/P * N bytes
    P, N = 4, 1 << 20
    assert link.seconds(2 * (P - 1), 2 * (P - 1) * N // P) == pytest.approx(
        6 * 50e-6 + 1.5 * N * 8 / 1e9)


def test_profiles_are_ordered_from_fast_to_slow():
    order = ["nvlink", "infiniband", "10gbe", "1gbe"]
    bws = [PROFILES[name].bandwidth_gbps for name in order]
    assert bws == sorted(bws, reverse=True)
    assert PROFILES["1gbe"].seconds(1, 1 << 20) > PROFILES["nvlink"].seconds(1, 1 << 20) * 100


def test_link_specs_parse_or_fail_clearly():
    assert link_model(None) is None
    assert link_model("10GbE") is PROFILES["10gbe"]
    assert link_model("5,25") == LinkModel(5.0, 25.0)
    assert link_model({"latency_us": 1, "bandwidth_gbps": 2}) == LinkModel(1.0, 2.0)
    with pytest.raises(ValueError, match="unknown link 'fast'"):
        link_model("fast")
    with pytest.raises(ValueError, match="bandwidth_gbps > 0"):
        LinkModel(1.0, 0.0)


def test_node_speeds_are_checked_and_relative_to_the_fastest(monkeypatch):
    assert simulate.check_node_speeds("1,0.5", 2) == [1.0, 0.5]
    with pytest.raises(ValueError, match="must be > 0"):
        simulate.check_node_speeds([1, 0], 2)
    slept = []
    monkeypatch.setattr(simulate.time, "sleep", slept.append)
    simulate.set_node_speeds([2.0, 1.0], rank=1)
    try:
        assert simulate.node_speed() == 0.5
        assert simulate.slow_down(0.2) == pytest.approx(0.2)  # takes 1/0.5 = twice as long
        simulate.set_node_speeds([2.0, 1.0], rank=0)
        assert simulate.slow_down(0.2) == 0.0
    finally:
        simulate.set_node_speeds(None, 0)
    assert slept == [pytest.approx(0.2)]
    assert simulate.node_speed() == 1.0 and simulate.node_speeds() is None


def link_job(comm, nbytes):
    x = np.zeros(nbytes // 4, np.float32)
    comm.allreduce(x)
    comm.allreduce(x, algorithm="ring")
    if comm.rank == 0:
        comm.send(x, 1)
    else:
        comm.recv(x, 0)
    with simulate.compute():
        pass
    return dict(comm.stats.seconds), simulate.node_speeds(), simulate.node_speed()


@pytest.mark.timeout(60)
def test_a_simulated_link_slows_each_operation_to_the_model():
    nbytes, P = 1 << 20, 2
    out = launch(link_job, P, args=(nbytes,), link="1gbe", node_speeds=[1, 0.5])
    link = PROFILES["1gbe"]
    allreduce_s = link.seconds(2 * (P - 1), 2 * (P - 1) * nbytes // P)
    for rank, (seconds, speeds, speed) in enumerate(out):
        assert seconds["allreduce"] >= 2 * allreduce_s  # both algorithms, each at least the model
        assert speeds == [1.0, 0.5] and speed == [1.0, 0.5][rank]
    assert out[0][0]["send"] >= link.seconds(1, nbytes)
