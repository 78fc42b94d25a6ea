"""ZeRO stages 1-3 and gradient accumulation compute plain data parallelism's parameters.

Stages 1-3 fold every gradient in the same rank order as the all-reduce, so their parameters are
bitwise those of plain data parallelism (stages 2-3 with accumulation add each micro-step's sum:
max relative difference ≤ 1e-12 in float64). Accumulation equals one step over the whole batch
to 1e-12. Each rank's bytes equal the formulas of ``memory.predict`` exactly. Workers are
launched once per hypothesis example and run every variant of every case.
"""

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.cluster import launch as cluster_launch
from minilepton.data import DataLoader
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.strategy import ParallelStrategy

EXACT = 1e-12  # float64, max |a − b| / max |b| per tensor, where the summation order differs


@dataclass
class Case:
    sizes: list
    n_samples: int
    batch_size: int
    optimizer: str
    bucket_bytes: int
    seed: int


def make_optimizer(case):
    if case.optimizer == "sgd":
        return lambda params: ml.optim.SGD(params, lr=0.1, momentum=0.5)
    return lambda params: ml.optim.Adam(params, lr=0.01, eps=1e-4)  # see test_data_parallel


def train(comm, layout, case, **memory):
    """A few steps of ``case`` on the ``layout`` (dp, tp, pp) grid with the memory options;
    (whole parameters, memory measured, memory predicted, evaluation) on this rank."""
    rng = np.random.default_rng(case.seed)
    x = rng.normal(size=(case.n_samples, case.sizes[0]))
    y = rng.integers(0, case.sizes[-1], case.n_samples)
    model = ml.nn.mlp(case.sizes, seed=case.seed, dtype="float64")
    strategy = ParallelStrategy(Mesh(comm, *layout), model, make_optimizer(case),
                                bucket_bytes=case.bucket_bytes, micro_batches=2, **memory)
    for b in DataLoader(x, y, case.batch_size, seed=case.seed).epoch_indices(0):
        local = strategy.local_indices(b)
        strategy.train_step(x[local], y[local], len(b))
    out = (strategy.full_parameters(), strategy.memory_bytes(), strategy.memory_predicted(),
           strategy.evaluate(x, y, batch_size=7))
    strategy.mesh.close()
    return out


VARIANTS = {"plain": {}, "zero1": {"zero": 1}, "zero2": {"zero": 2}, "zero3": {"zero": 3},
            "accum": {"grad_accum": 3}, "zero1_accum": {"zero": 1, "grad_accum": 3},
            "zero3_accum": {"zero": 3, "grad_accum": 2, "recompute": True}}


def zero_worker(comm, layout, cases, variants):
    return [{name: train(comm, layout, case, **variants[name]) for name in variants}
            for case in cases]


def max_relative(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-300)) for k in b)


def check(results, variants, bitwise_with=("zero1", "zero2", "zero3")):
    for per_case in results[0]:
        ref = per_case["plain"][0]
        for name in variants:
            params, measured, predicted, evaluation = per_case[name]
            if name in bitwise_with:
                assert all(np.array_equal(params[k], ref[k]) for k in ref), name
                assert evaluation == per_case["plain"][3]
            else:
                assert max_relative(params, ref) <= EXACT, name
            for kind in ("parameters_bytes", "gradients_bytes", "optimizer_bytes",
                         "buffers_bytes"):
                assert measured[kind] == predicted[kind], (name, kind)
    for rank_results in results[1:]:  # every rank ends with the same bits
        for mine, first in zip(rank_results, results[0]):
            for name in variants:
                assert all(np.array_equal(mine[name][0][k], first[name][0][k])
                           for k in first[name][0])


cases = st.lists(st.builds(
    Case, sizes=st.lists(st.integers(1, 7), min_size=2, max_size=4),
    n_samples=st.integers(1, 30), batch_size=st.integers(1, 12),
    optimizer=st.sampled_from(["sgd", "adam"]), bucket_bytes=st.sampled_from([16, 200, 1 << 20]),
    seed=st.integers(0, 1000)), min_size=2, max_size=2)


@pytest.mark.timeout(150)
@settings(max_examples=15, deadline=None)
@given(st.integers(1, 4), cases)
def test_zero_stages_and_accumulation_equal_plain_data_parallelism(world_size, cases):
    results = cluster_launch(zero_worker, world_size, args=((world_size, 1, 1), cases, VARIANTS),
                             timeout_s=60)
    check(results, VARIANTS)


@pytest.mark.timeout(120)
def test_zero_over_tensor_and_pipeline_groups():
    """ZeRO over the data group of a dp × tp and a dp × pp grid (stage 1 with a pipeline)."""
    case = Case([6, 8, 7, 5], 26, 8, "adam", 200, 3)
    for layout, variants in (((2, 2, 1), ("plain", "zero1", "zero2", "zero3", "zero3_accum")),
                             ((2, 1, 2), ("plain", "zero1", "zero1_accum"))):
        chosen = {name: VARIANTS[name] for name in variants}
        results = cluster_launch(zero_worker, 4, args=(layout, [case], chosen), timeout_s=60)
        check(results, chosen)


def sharding_worker(comm, case):
    return {stage: train(comm, (comm.world_size, 1, 1), case, zero=stage)[1]
            for stage in range(4)}


@pytest.mark.timeout(60)
def test_each_stage_shards_what_it_promises():
    """Per rank, with Adam: stage 1 holds 1/P of the optimizer state, 2 also of the gradients,
    3 also of the parameters (plus one gathered layer), to within the padding."""
    case = Case([12, 40, 40, 10], 40, 20, "adam", 1 << 20, 0)
    P = 4
    got = cluster_launch(sharding_worker, P, args=(case,), timeout_s=50)[0]
    plain = got[0]
    psi = sum(a * b + b for a, b in itertools.pairwise(case.sizes))
    assert plain["parameters_bytes"] == plain["gradients_bytes"] == 8 * psi
    assert plain["optimizer_bytes"] == 16 * psi
    for stage, sharded in (1, ("optimizer",)), (2, ("optimizer", "gradients")), \
            (3, ("optimizer", "gradients", "parameters")):
        for kind in ("parameters", "gradients", "optimizer"):
            ratio = got[stage][f"{kind}_bytes"] / plain[f"{kind}_bytes"]
            if kind not in sharded:
                assert ratio == pytest.approx(1, abs=0.01)
            elif kind == "parameters":  # a rank's blocks, and the largest layer gathered
                assert ratio == pytest.approx(1 / P + 1640 / psi, abs=0.01)
            else:
                assert ratio == pytest.approx(1 / P, abs=0.01)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_zero_over_mpi_equals_plain_data_parallelism_bitwise():
    pytest.importorskip("mpi4py")
    case = Case([5, 7, 4], 21, 6, "adam", 64, 11)
    chosen = {name: VARIANTS[name] for name in ("plain", "zero1", "zero2", "zero3", "accum")}
    results = cluster_launch(zero_worker, 3, args=((3, 1, 1), [case], chosen), backend="mpi",
                             timeout_s=90)
    check(results, chosen)
