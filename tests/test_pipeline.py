"""Pipeline parallelism: stages, schedules and micro-batches give the serial gradients."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.parallel.pipeline import (
    blocks,
    measure_block_seconds,
    partition,
    partition_sizes,
    split_stages,
)
from minilepton.parallel.schedules import in_flight, schedule

TOL = {"float64": 1e-10, "float32": 1e-5}


def launch(fn, world_size, args=(), backend="shm"):
    from minilepton.cluster import launch as _launch
    return _launch(fn, world_size, args=args, backend=backend, timeout_s=60)


def close(a, b, dtype) -> bool:
    rtol = TOL[dtype]
    return np.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


# ---------------------------------------------------------------- pure parts
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=7), st.integers(1, 7))
def test_partition_is_contiguous_and_optimal(costs, stages):
    if stages > len(costs):
        with pytest.raises(ValueError, match="more stages than layers"):
            partition(costs, stages)
        return
    cuts = partition(costs, stages)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(costs)
    assert all(a < b for a, b in cuts) and all(x[1] == y[0] for x, y in zip(cuts, cuts[1:]))
    best = min(max(sum(costs[a:b]) for a, b in zip((0,) + c, c + (len(costs),)))
               for c in itertools.combinations(range(1, len(costs)), stages - 1))
    assert max(sum(costs[a:b]) for a, b in cuts) == best


def test_stages_keep_names_and_balance_parameters():
    model = ml.nn.mlp([20, 30, 30, 5, 4], seed=0)
    assert blocks(model) == [["0", "1"], ["2", "3"], ["4", "5"], ["6"]]
    stages = split_stages(model, 2)
    names = [[n for n, _ in s.named_parameters()] for s in stages]
    assert names == [["0.weight", "0.bias"], ["2.weight", "2.bias", "4.weight", "4.bias",
                                                "6.weight", "6.bias"]]
    assert partition_sizes([20, 30, 30, 5, 4], 2) == [[(20, 30)], [(30, 30), (30, 5), (5, 4)]]
    seconds = measure_block_seconds(model, np.ones((8, 20), np.float32), repeats=1)
    assert len(seconds) == 4 and all(s > 0 for s in seconds)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- equivalence with serial
def _pp_worker(comm, cases):
    """Serial and pipelined forward/backward/SGD step of each case; this stage's numbers."""
    from minilepton.autograd.losses import cross_entropy
    from minilepton.optim import SGD
    from minilepton.parallel.pipeline import PipelineParallel
    out = []
    for sizes, dtype, seed, batch, micro_batches, name in cases:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batch, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], batch)
        serial = ml.nn.mlp(sizes, seed=seed, dtype=dtype)
        loss = cross_entropy(serial(ml.Tensor(x)), y, reduction="sum") * (1.0 / batch)
        loss.backward()
        stages = split_stages(ml.nn.mlp(sizes, seed=seed, dtype=dtype), comm.world_size)
        widths = [s[0].in_features for s in stages] + [sizes[-1]]
        stage = stages[comm.rank]
        pipe = PipelineParallel(stage, comm, widths, micro_batches, name)
        stats = pipe.train_step(x, y, batch)
        grads = {n: p.grad.copy() for n, p in stage.named_parameters()}
        for model in (serial, stage):
            SGD(model.parameters(), lr=0.5).step()
        ref = dict(serial.named_parameters())
        out.append((loss.item() * batch, stats.loss_sum, stats.count,
                    {n: (g, ref[n].grad) for n, g in grads.items()},
                    {n: (p.numpy(), ref[n].numpy()) for n, p in stage.named_parameters()},
                    pipe.meter.peak_bytes))
    return out


@pytest.mark.timeout(120)
@settings(max_examples=4, deadline=None)
@given(st.integers(2, 3), st.lists(st.tuples(
    st.lists(st.integers(2, 8), min_size=4, max_size=6), st.sampled_from(["float64", "float32"]),
    st.integers(0, 99), st.integers(1, 9), st.integers(1, 5), st.sampled_from(["gpipe", "1f1b"])),
    min_size=1, max_size=3))
def test_pipeline_equals_serial(world_size, cases):
    for rank_results in launch(_pp_worker, world_size, (cases,)):
        for case, (ref_loss, loss, count, grads, params, _) in zip(cases, rank_results):
            dtype = case[1]
            assert count == case[3] and loss == pytest.approx(ref_loss, rel=TOL[dtype])
            for name, (got, want) in grads.items():
                assert close(got, want, dtype), (case, name)
            for name, (got, want) in params.items():
                assert close(got, want, dtype), (case, name)


@pytest.mark.timeout(60)
def test_1f1b_holds_fewer_activations_than_gpipe():
    P, M, batch = 2, 8, 16
    cases = [([6, 10, 10, 3], "float64", 0, batch, M, name) for name in ("gpipe", "1f1b")]
    results = launch(_pp_worker, P, (cases,))
    for stage, rank_results in enumerate(results):
        gpipe_peak, f1b_peak = rank_results[0][-1], rank_results[1][-1]
        per_micro_batch = gpipe_peak / M  # equal micro-batches: GPipe holds all M
        held = in_flight(schedule("1f1b", M, P), stage)
        assert f1b_peak == held * per_micro_batch < gpipe_peak


# ---------------------------------------------------------------- failures
class _Boom(ml.nn.Module):
    def forward(self, x):
        raise FloatingPointError("this stage cannot compute")


def _failing_worker(comm):
    from minilepton.parallel.pipeline import PipelineParallel
    stages = [ml.nn.Sequential(ml.nn.Linear(4, 4, rng=0)),
              ml.nn.Sequential(ml.nn.Linear(4, 3, rng=1), _Boom())]
    pipe = PipelineParallel(stages[comm.rank], comm, [4, 4, 3], 2, "1f1b")
    pipe.train_step(np.ones((4, 4), np.float32), np.zeros(4, np.int64), 4)


@pytest.mark.timeout(60)
def test_failing_stage_stops_the_job_and_is_named():
    from minilepton.cluster import WorkerError
    with pytest.raises(WorkerError, match=r"rank 1[\s\S]*pipeline stage 1 \(rank 1\) failed"):
        launch(_failing_worker, 2)
