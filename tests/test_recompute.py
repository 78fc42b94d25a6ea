"""Activation recomputation gives bitwise the parameters of the run without it, alone, with
tensor and pipeline parallelism and with ZeRO, while the activation peak drops."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.cluster import launch
from minilepton.comm.local import LocalComm
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.recompute import blocks_of, checkpoint
from minilepton.parallel.strategy import ParallelStrategy


def run(comm, layout, sizes, dtype, optimizer, seed, batch=8, steps=3, **memory):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * batch, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], steps * batch)
    make = ((lambda ps: ml.optim.Adam(ps, lr=0.01)) if optimizer == "adam"
            else (lambda ps: ml.optim.SGD(ps, lr=0.2, momentum=0.9)))
    strategy = ParallelStrategy(Mesh(comm, *layout), ml.nn.mlp(sizes, seed=seed, dtype=dtype),
                                make, micro_batches=2, **memory)
    for step in range(steps):
        idx = strategy.local_indices(np.arange(step * batch, (step + 1) * batch))
        strategy.train_step(x[idx], y[idx], batch)
    out = strategy.full_parameters(), strategy.memory_bytes()["activations_peak_bytes"]
    strategy.mesh.close()
    return out


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=2, max_size=6),
       st.sampled_from(["float64", "float32"]), st.sampled_from(["sgd", "adam"]),
       st.integers(0, 99), st.sampled_from(["fp32", "bf16"]))
def test_recomputation_changes_no_bit(sizes, dtype, optimizer, seed, precision):
    plain, _ = run(LocalComm(), (1, 1, 1), sizes, dtype, optimizer, seed, precision=precision)
    again, _ = run(LocalComm(), (1, 1, 1), sizes, dtype, optimizer, seed, precision=precision,
                   recompute=True)
    assert all(np.array_equal(plain[k], again[k]) for k in plain)


def test_blocks_are_a_layer_with_its_activation_and_checkpoint_keeps_only_the_input():
    model = ml.nn.mlp([5, 4, 3, 2], seed=0)
    assert [len(b) for b in blocks_of(model)] == [2, 2, 1]
    x = ml.Tensor(np.ones((2, 5), np.float32), requires_grad=True)
    y = checkpoint(model, x)
    assert y._parents[0] is x and len(y._parents) == 1 + len(model.parameters())
    y.sum().backward()
    ref = ml.Tensor(np.ones((2, 5), np.float32), requires_grad=True)
    grads = [p.grad.copy() for p in model.parameters()]
    model.zero_grad()
    model(ref).sum().backward()
    assert np.array_equal(x.grad, ref.grad)
    assert all(np.array_equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def parallel_worker(comm, layout, cases):
    return [[run(comm, layout, *case, recompute=flag, **extra) for flag in (False, True)]
            for case, extra in cases]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout, extra", [
    ((1, 2, 2), {"schedule": "gpipe"}), ((2, 1, 2), {"schedule": "1f1b", "zero": 1}),
    ((2, 2, 1), {"zero": 3})])
def test_recomputation_with_tensor_pipeline_and_zero_changes_no_bit(layout, extra):
    schedule = extra.pop("schedule", None)
    if schedule:
        extra["schedule"] = schedule
    cases = [(([6, 16, 16, 16, 5], "float64", "adam", 3), extra),
             (([4, 8, 8, 3], "float32", "sgd", 4), extra)]
    results = launch(parallel_worker, int(np.prod(layout)), args=(layout, cases), timeout_s=60)
    for rank in results:
        for (plain, peak), (again, peak_again) in rank:
            assert all(np.array_equal(plain[k], again[k]) for k in plain)
            assert peak_again <= peak or layout[2] > 1  # a one-layer stage gains nothing
    if layout[2] > 1:  # a stage of several layers keeps only its input per micro-batch
        assert any(again[1] < plain[1] for rank in results for plain, again in rank)
