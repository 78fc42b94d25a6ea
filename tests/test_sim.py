"""The cost model's formulas on cases worked out by hand (no process is started, no clock read).

Collectives by their α-β counts, hierarchical groups, pipeline time and memory against the
schedule generators themselves, a whole predicted step of a tiny MLP against the sum done by
hand on a made-up profile, the GPT's FLOPs against the Megatron-LM formula, memory against
the ZeRO arithmetic and against the code's own ActivationMeter, and the search against a case
whose best layout follows from reasoning alone.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from minilepton import nn, sim
from minilepton.comm.local import LocalComm
from minilepton.parallel import schedules
from minilepton.parallel.memory import predict, predict_activations
from minilepton.parallel.pipeline import PipelineParallel
from minilepton.sim import pipeline, tables
from minilepton.sim.collectives import AlphaBeta, Link, Network, members_per_node
from minilepton.sim.search import search
from minilepton.sim.step import memory_of


def fake_profile(cores: int = 2) -> dict:
    """A measured profile with round numbers: 1 GFLOP/s products, 1 ns per byte of memory-bound
    work and of optimizer work per element, 10 µs + 1 ns/byte collectives."""
    table = {"axes": [[1, 4096]] * 3, "gflops": [[[1.0, 1.0], [1.0, 1.0]]] * 2}
    line = {"a": 1e-5, "b": 1e-9}
    ops = {op: {"arena": {"2": line, "4": line}, "private": {"2": line, "4": line}}
           for op in ("allreduce", "allgather", "reduce_scatter", "broadcast", "p2p")}
    return {"name": "made-up", "kind": "measured", "cores": cores, "memory_bytes": 2 ** 33,
            "process_bytes": 0.0,
            "matmul": {"float32": {"1": table}, "float64": {"1": table}},
            "memory": [[1, 1e-9], [1e9, 1.0]],
            "optimizer": {name: {"float32": [[1, 1e-9], [1e6, 1e-3]]} for name in ("adam", "sgd")},
            "engine": {"step_s": 1e-4, "pass_s": 0.0, "block_s": 3e-5, "tensor_s": 1e-5,
                       "microbatch_s": 0.0, "layouts": {}},
            "collectives": {"shm": ops}}


def test_alpha_beta_counts_of_each_algorithm():
    link = Link("t", latency_us=2.0, bandwidth_gbps=8.0)   # α = 2 µs, β = 1 ns per byte
    ab = AlphaBeta(link)
    N, P = 1e6, 4
    assert ab.ring_allreduce(N, P) == pytest.approx(2 * 3 * 2e-6 + 2 * 3 / 4 * N * 1e-9)
    assert ab.halving_allreduce(N, P) == pytest.approx(2 * 2 * 2e-6 + 2 * 3 / 4 * N * 1e-9)
    assert ab.tree_allreduce(N, P) == pytest.approx(2 * 2 * (2e-6 + N * 1e-9))
    assert ab.allreduce(N, P) == ab.halving_allreduce(N, P)
    assert ab.allreduce(8, 64) < ab.ring_allreduce(8, 64) / 5   # latency-bound: log P, not P
    assert ab.reduce_scatter(N, P) == pytest.approx(3 * 2e-6 + 3 / 4 * N * 1e-9)
    assert ab.broadcast(N, P) == pytest.approx(3 * (2e-6 + N * 1e-9))
    assert ab.p2p(N) == pytest.approx(2e-6 + N * 1e-9)
    assert ab.allreduce(N, 1) == 0.0
    shared = AlphaBeta(Link("e", 10.0, 8.0, per_node=True), sharing=8)
    assert shared.p2p(N) == pytest.approx(10e-6 + 8 * N * 1e-9)


def test_a_group_across_nodes_is_reduce_scatter_inside_all_reduce_between_all_gather():
    intra, inter = AlphaBeta(Link("i", 1.0, 800.0)), AlphaBeta(Link("e", 5.0, 80.0))
    net = Network(intra, inter, devices_per_node=8)
    N = 3.2e7
    assert members_per_node(16, 1, 8) == 8 and members_per_node(16, 8, 8) == 1
    assert members_per_node(4, 2, 8) == 4 and members_per_node(8, 4, 8) == 2
    by_hand = intra.reduce_scatter(N, 8) + inter.allreduce(N / 8, 2) + intra.allgather(N, 8)
    assert net.allreduce(N, 16, stride=1) == pytest.approx(by_hand)
    assert net.allreduce(N, 8, stride=1) == pytest.approx(intra.allreduce(N, 8))
    assert net.allreduce(N, 16, stride=8) == pytest.approx(inter.allreduce(N, 16))
    assert net.spans_nodes(2, 8) and not net.spans_nodes(2, 4)


def test_tables_read_between_points_in_log_space():
    points = [(1, 1.0), (100, 10.0)]
    assert tables.loglog(points, 10) == pytest.approx(math.sqrt(10))
    assert tables.loglog(points, 0.5) == 1.0
    assert tables.loglog(points, 1000) == pytest.approx(100.0)       # the last rate, held
    axes = [[1, 4], [1, 4], [1, 4]]
    values = [[[1, 1], [1, 1]], [[1, 1], [1, 16]]]
    assert tables.grid(axes, values, (2, 2, 2)) == pytest.approx(16 ** (1 / 8))
    assert tables.grid(axes, values, (4, 4, 4)) == pytest.approx(16)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_the_flush_is_the_replay_of_the_schedule(name):
    rng = random.Random(7)
    for _ in range(20):
        P, M = rng.randint(2, 5), rng.randint(1, 12)
        fwd = [rng.uniform(0.5, 2.0) for _ in range(P)]
        bwd = [rng.uniform(1.0, 4.0) for _ in range(P)]
        latency = rng.choice([0.0, 0.3])
        orders = [[(m, ph, fwd[s] if ph == schedules.FORWARD else bwd[s])
                   for m, ph in (schedules.gpipe_order if name == "gpipe" else
                                 schedules.one_f_one_b_order)(M, P, s)] for s in range(P)]
        replay = schedules.replay(orders, latency)
        flush = pipeline.flush(name, M, fwd, bwd, latency)
        assert flush["makespan_s"] == pytest.approx(replay["makespan_s"], rel=1e-12)
        assert flush["bubble_s"] == pytest.approx(replay["makespan_s"] - M * max(
            f + b for f, b in zip(fwd, bwd)), rel=1e-9, abs=1e-12)


def test_equal_stages_give_the_textbook_bubble():
    P, M, f, b = 4, 8, 1.0, 2.0
    flush = pipeline.flush("1f1b", M, [f] * P, [b] * P)
    assert flush["bubble_s"] / flush["makespan_s"] == pytest.approx(
        schedules.bubble_fraction(P, M))


def test_long_flushes_extend_the_replay_by_whole_periods():
    for name in ("gpipe", "1f1b"):
        for P in (4, 8):
            M = pipeline.EXACT_OPS // P + 3 * P + 1
            exact = pipeline.replay_makespan(name, M, [1.0] * P, [2.5] * P, 0.2)
            assert pipeline.flush(name, M, [1.0] * P, [2.5] * P, 0.2)["makespan_s"] == \
                pytest.approx(exact, rel=1e-9)
    rng = random.Random(3)
    fwd = [rng.uniform(0.5, 2) for _ in range(5)]
    bwd = [rng.uniform(1, 4) for _ in range(5)]
    M = pipeline.EXACT_OPS // 5
    exact = pipeline.replay_makespan("1f1b", M, fwd, bwd, 0.7)
    assert pipeline.flush("1f1b", M, fwd, bwd, 0.7)["makespan_s"] == pytest.approx(exact, rel=0.03)


def test_interleaving_divides_the_bubble_by_the_chunks():
    P, M, v = 4, 8, 2
    plain = pipeline.flush("1f1b", M, [1.0] * P, [2.0] * P)
    inter = pipeline.flush("1f1b", M, [1.0] * P, [2.0] * P, virtual=v)
    assert inter["bubble_s"] == pytest.approx(plain["bubble_s"] / v)


@pytest.mark.parametrize("name", ["gpipe", "1f1b"])
def test_held_micro_batches_are_the_plans_in_flight(name):
    for M, P in [(1, 3), (3, 4), (8, 4), (20, 5), (7, 2)]:
        plan = schedules.schedule(name, M, P)
        for s in range(P):
            assert pipeline.held(name, M, P, s) == schedules.in_flight(plan, s)


def test_mlp_activations_are_what_the_pipeline_meter_counts():
    for sizes in ([784, 128, 10], [20, 16, 12, 8, 4]):
        stage = nn.mlp(sizes, seed=0)
        pipe = PipelineParallel(stage, LocalComm(), [sizes[0], sizes[-1]], 2, "gpipe")
        pipe.train_step(np.ones((8, sizes[0]), np.float32), np.zeros(8, int), 8)
        shards = [layer.shard(1, 4) for layer in sim.mlp(sizes).layers]
        assert pipe.meter.peak_bytes == 8 * (shards[0].inputs + sum(s.activations for s in shards))


def test_a_tiny_mlp_step_adds_up_as_computed_by_hand():
    hw = sim.hardware(fake_profile())
    p = sim.predict(sim.mlp([4, 8, 2]), sim.Layout(batch_size=2, blas_threads=1), hw)
    gemm = (2 * 2 * 4 * 8 * 2 + 2 * 2 * 8 * 2 * 3) * 1e-9   # products at 1 GFLOP/s
    memory = (2 * 4 * (16 + 16) + 2 * 4 * (24 + 24 + 8) + 2 * 4 * 4 + 2 * 4 * 8) * 1e-9
    compute = gemm + memory + 2 * 3e-5                        # and two blocks of the engine
    optimizer = 4 * 1e-5 + 1e-9 * (58 - 4) + 4 * 4 * (40 + 18) * 1e-9
    engine = 1e-4 + 2 * 2 * 4 * 4 * 1e-9                      # the step, slicing the batch
    bd = p["breakdown"]
    assert bd["compute_s"] == pytest.approx(compute, rel=1e-9)
    assert bd["optimizer_s"] == pytest.approx(optimizer, rel=1e-9)
    assert bd["engine_s"] == pytest.approx(engine, rel=1e-9)
    assert p["step_seconds"] == pytest.approx(compute + optimizer + engine, rel=1e-9)
    assert p["samples_per_second"] == pytest.approx(2 / p["step_seconds"])


def test_data_parallel_adds_one_bucket_all_reduce_and_the_parts_add_up():
    hw = sim.hardware(fake_profile())
    p = sim.predict(sim.mlp([4, 8, 2]), sim.Layout(dp=2, batch_size=4, blas_threads=1), hw)
    assert p["breakdown"]["communication_s"] == {"data/allreduce": pytest.approx(1e-5 + 232e-9)}
    bd = p["breakdown"]
    total = (sum(v for k, v in bd.items() if k != "communication_s")
             + sum(bd["communication_s"].values()))
    assert total == pytest.approx(p["step_seconds"], rel=1e-12)


def test_more_workers_than_cores_wait_for_the_cores():
    hw = sim.hardware(fake_profile(cores=2))
    layout = sim.Layout(dp=4, batch_size=64, blas_threads=1)
    p = sim.predict(sim.mlp([64, 64, 8]), layout, hw)
    assert p["breakdown"]["shared_cores_s"] > 0
    alone = sim.predict(sim.mlp([64, 64, 8]), layout, sim.hardware(fake_profile(cores=4)))
    assert alone["breakdown"]["shared_cores_s"] == 0
    assert p["step_seconds"] > alone["step_seconds"]


def test_a_slow_node_sets_the_pace_and_balancing_evens_it_out():
    hw = sim.hardware(fake_profile(cores=4))
    model = sim.mlp([256, 256, 8])
    even = sim.predict(model, sim.Layout(dp=2, batch_size=64), hw)
    slow = sim.predict(model, sim.Layout(dp=2, batch_size=64, node_speeds=(1.0, 0.5)), hw)
    balanced = sim.predict(model, sim.Layout(dp=2, batch_size=64, node_speeds=(1.0, 0.5),
                                             balance="static"), hw)
    assert slow["breakdown"]["stragglers_s"] > 0
    assert even["step_seconds"] < balanced["step_seconds"] < slow["step_seconds"]


def test_gpt_flops_are_the_megatron_formula():
    L, h, a, s, V, B = 4, 256, 8, 128, 1000, 16
    model = sim.gpt(L, h, a, s, V)
    assert model.flops_per_sample() * B == pytest.approx(
        72 * B * s * L * h * h * (1 + s / (6 * h) + V / (12 * L * h)))
    hw = sim.hardware("a100-80gb")
    for recompute, factor in ((False, 72), (True, 96)):
        layout = sim.Layout(batch_size=B, precision="bf16", recompute=recompute)
        p = sim.predict(model, layout, hw)
        per_step = p["tflops_per_device"] * 1e12 * p["step_seconds"]
        megatron = factor * B * s * L * h * h * (1 + s / (6 * h)) + 6 * B * s * h * V
        assert per_step == pytest.approx(megatron, rel=1e-9)


def test_gpt_memory_is_the_zero_arithmetic_and_the_activation_formula():
    L, h, a, s, V = 8, 1024, 16, 512, 4096
    model = sim.gpt(L, h, a, s, V)
    hw = sim.hardware("h100-sxm")
    base = sim.Layout(dp=4, tp=2, pp=2, batch_size=16, micro_batches=4, schedule="1f1b",
                      precision="bf16")
    m0 = memory_of(model, base, hw)
    phi = (L // 2) * ((12 * h * h + 7 * h) // 2 + 6 * h) + V * h // 2 + s * h  # first stage
    assert m0["parameters_bytes"] == pytest.approx(2 * phi)
    assert m0["optimizer_bytes"] == pytest.approx(12 * phi)
    m1 = memory_of(model, base.with_(zero=1), hw)
    assert m1["optimizer_bytes"] == pytest.approx(12 * phi / 4)
    m3 = memory_of(model, base.with_(pp=1, dp=8, micro_batches=2, zero=3), hw)
    whole = L * ((12 * h * h + 7 * h) // 2 + 6 * h) + V * h + s * h + 2 * h  # tp 2, one stage
    assert m3["gradients_bytes"] == pytest.approx(2 * whole / 8)
    layer = (12 * h * h + 7 * h) // 2  # the largest tensor: one layer, gathered whole
    assert m3["parameters_bytes"] == pytest.approx(2 * (whole / 8 + layer))
    # 1F1B: the first of 2 stages holds 2 micro-batches of 1 sequence; Korthikanti et al. 2022
    layer = s * h * (10 + 24 / 2) + 5 * a * s * s / 2
    assert m0["activations_peak_bytes"] == pytest.approx(2 * ((L // 2) * layer + s * h * 2))
    recompute = memory_of(model, base.with_(recompute=True), hw)
    assert recompute["activations_peak_bytes"] < m0["activations_peak_bytes"] / 4


def test_the_search_finds_the_best_layout_a_free_network_implies():
    # Free, instant links and ample memory: splitting the batch (dp) keeps every product whole
    # and has no bubble, so dp = N wins, with the largest micro-batch, no recompute, and ZeRO 2
    # (the traffic of the all-reduce and of ZeRO 1, less memory; ZeRO 3 gathers parameters
    # twice more per pass).
    profile = {"name": "ideal", "kind": "accelerator", "peak_tflops": {"bf16": 100.0},
               "matmul_efficiency": {"bf16": 0.8}, "matmul_half_size": {"bf16": 64},
               "memory_gib": 1000, "memory_bandwidth_gbs": 1000, "gpus_per_node": 4,
               "launch_overhead_us": 0.0, "reserved_gib": 0.0,
               "intra_node_link": {"latency_us": 0.0, "bandwidth_gbps": 1e12},
               "inter_node_link": {"latency_us": 0.0, "bandwidth_gbps": 1e12}}
    hw = sim.hardware(profile)
    model = sim.gpt(4, 512, 8, 256, 1024)
    result = search(model, 4, hw, sim.Layout(batch_size=16, precision="bf16", schedule="1f1b"))
    best = result["layouts"][0]
    assert (best["dp"], best["tp"], best["pp"]) == (4, 1, 1)
    assert best["micro_batch_size"] == 4 and not best["recompute"] and best["zero"] == 2
    assert result["fitting"] == result["candidates"]


def test_the_search_keeps_only_layouts_that_fit():
    hw = sim.hardware("a100-80gb", devices_per_node=8)
    model = sim.gpt(24, 4096, 32, 2048, 51200)
    result = search(model, 8, hw, sim.Layout(batch_size=64, precision="bf16", schedule="1f1b"))
    assert 0 < result["fitting"] < result["candidates"]
    for row in result["layouts"]:
        assert row["memory_total_bytes"] <= hw.memory_bytes
    speeds = [r["samples_per_second"] for r in result["layouts"]]
    assert speeds == sorted(speeds, reverse=True)


def test_profiles_name_their_sources_and_links_load():
    for name in sim.builtin_names():
        hw = sim.hardware(name)
        assert hw.compute.sources and hw.memory_bytes > 0
    assert {"a100-80gb", "h100-sxm", "h200"} <= set(sim.builtin_names())
    assert {"nvlink3", "nvlink4", "ib-hdr", "ib-ndr", "roce-400", "ethernet-100g"} <= set(sim.links())
    assert sim.link("5,10").bandwidth_gbps == 10.0
    with pytest.raises(ValueError, match="unknown link"):
        sim.link("carrier-pigeon")
    with pytest.raises(ValueError, match="unknown hardware"):
        sim.hardware("abacus")


def test_layouts_that_cannot_run_are_one_line_errors():
    with pytest.raises(ValueError, match="does not split"):
        sim.Layout(dp=3, batch_size=32).check()
    with pytest.raises(ValueError, match="micro-batches"):
        sim.Layout(pp=2, batch_size=32, micro_batches=5).check()
    with pytest.raises(ValueError, match="divisible"):
        sim.gpt(2, 100, 3, 16, 10)


@pytest.mark.parametrize("recompute", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlp_memory_is_the_codes_own_prediction(recompute, precision):
    sizes, rows = [784, 256, 128, 10], 64
    hw = sim.hardware(fake_profile())
    layout = sim.Layout(dp=2, batch_size=2 * rows, zero=1, recompute=recompute,
                        precision=precision)
    mem = memory_of(sim.mlp(sizes), layout, hw)
    b = 2 if precision != "fp32" else 4
    assert mem["activations_peak_bytes"] == predict_activations(
        sizes, rows, b, recompute, float32_logits=precision != "fp32")
    tensors = [n for k, m in itertools.pairwise(sizes) for n in (k * m, m)]
    held = predict(tensors, 2, 1, b, 4, 2, precision != "fp32")
    for key in ("parameters_bytes", "gradients_bytes", "optimizer_bytes"):
        assert mem[key] == held[key]
