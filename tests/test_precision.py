"""Mixed precision: the 16-bit emulation is exactly the tensor-core arithmetic it claims, a run
stays close to float32, master weights hold the truth, and fp16 loss scaling skips overflows.

Exact comparisons: the autograd's 16-bit forward and backward against the same arithmetic
written out in NumPy (bitwise). Against float32 the tolerance is statistical: one step's
gradients agree in norm to 10% (bf16, 8 significant bits; ReLU masks flip where forward rounding
crosses zero) and 2% (fp16, 11 bits).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.autograd.lowp import cast, mm
from minilepton.backend import BFLOAT16
from minilepton.cluster import launch
from minilepton.comm.local import LocalComm
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.precision import LossScaler, cast_module, float32_loss, overflowed
from minilepton.parallel.stats import sum_cross_entropy
from minilepton.parallel.strategy import ParallelStrategy

LOW = {"bf16": BFLOAT16, "fp16": np.dtype(np.float16)}
F32 = np.float32


def r16(a, dtype):
    """Round to 16 bits (and keep the 16-bit array)."""
    return np.asarray(a).astype(dtype)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_a_16_bit_product_rounds_once_after_a_float32_sum(name):
    dtype = LOW[name]
    rng = np.random.default_rng(0)
    a, b = r16(rng.normal(size=(7, 300)), dtype), r16(rng.normal(size=(300, 5)), dtype)
    expected = (a.astype(F32) @ b.astype(F32)).astype(dtype)
    got = mm(a, b)
    assert got.dtype == dtype and np.array_equal(got.view(np.uint16), expected.view(np.uint16))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 9), st.integers(1, 12), st.integers(1, 12), st.integers(2, 6),
       st.sampled_from(["bf16", "fp16"]), st.integers(0, 99))
def test_16_bit_forward_and_backward_equal_the_arithmetic_written_out(n, d_in, hidden, classes,
                                                                      name, seed):
    dtype = LOW[name]
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d_in)).astype(F32), rng.integers(0, classes, n)
    model = ml.nn.mlp([d_in, hidden, classes], seed=seed)
    cast_module(model, dtype)
    logits = model(ml.Tensor(x.astype(dtype)))
    (float32_loss(sum_cross_entropy)(logits, y) * (1.0 / n)).backward()
    W1, b1, W2, b2 = (p.data for p in model.parameters())

    def up(a):
        return a.astype(F32)
    x16 = x.astype(dtype)
    h = (up(x16) @ up(W1) + up(b1)).astype(dtype)
    r = np.maximum(h, 0)
    z = (up(r) @ up(W2) + up(b2)).astype(dtype)
    leaf = ml.Tensor(up(z), requires_grad=True)
    (sum_cross_entropy(leaf, y) * (1.0 / n)).backward()
    dz = leaf.grad.astype(dtype)                   # the cast's backward rounds ∂L/∂logits
    dr = (up(dz) @ up(W2).T).astype(dtype)
    dh = dr * (r > 0)
    expected = [(up(x16).T @ up(dh)).astype(dtype), up(dh).sum(0).astype(dtype),
                (up(r).T @ up(dz)).astype(dtype), up(dz).sum(0).astype(dtype)]
    assert np.array_equal(logits.data.view(np.uint16), z.view(np.uint16))
    for p, e in zip(model.parameters(), expected):
        assert p.grad.dtype == dtype and np.array_equal(p.grad.view(np.uint16), e.view(np.uint16))


def test_cast_passes_the_gradient_back_in_the_input_dtype():
    x = ml.Tensor(np.array([1.0, 2.0, 3.0], F32), requires_grad=True)
    y = cast(x, BFLOAT16)
    assert y.dtype == BFLOAT16 and cast(x, F32) is x
    (cast(y, F32) * 2.0).sum().backward()
    assert x.grad.dtype == F32 and np.array_equal(x.grad, [2.0, 2.0, 2.0])


def one_step(precision, sizes=(30, 48, 48, 10), scaler=None, rows=64, lr=1.0, steps=1):
    """(strategy, gradient of the first step as θ_before − θ_after with SGD lr 1)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(rows, sizes[0])).astype(F32), rng.integers(0, sizes[-1], rows)
    strategy = ParallelStrategy(Mesh(LocalComm()), ml.nn.mlp(sizes, seed=1),
                                lambda ps: ml.optim.SGD(ps, lr=lr), precision=precision,
                                loss_scaler=scaler)
    before = strategy.full_parameters()
    for _ in range(steps):
        strategy.train_step(x, y, rows)
    after = strategy.full_parameters()
    return strategy, {k: before[k] - after[k] for k in before}


@pytest.mark.parametrize("name, tolerance", [("bf16", 0.10), ("fp16", 0.02)])
def test_a_16_bit_step_is_close_to_the_float32_step(name, tolerance):
    _, ref = one_step("fp32")
    strategy, got = one_step(name)
    for k in ref:
        assert np.linalg.norm(got[k] - ref[k]) <= tolerance * np.linalg.norm(ref[k]), k
    masters = strategy.master.masters
    params = strategy.model.parameters()
    assert all(m.dtype == F32 for m in masters) and all(p.dtype == LOW[name] for p in params)
    for m, p in zip(masters, params):  # the 16-bit parameters are the rounded masters
        assert np.array_equal(m.data.astype(LOW[name]).view(np.uint16), p.data.view(np.uint16))
    saved = strategy.full_parameters()  # what --save writes: the float32 masters
    assert all(saved[n].dtype == F32 for n in saved)


@pytest.mark.filterwarnings("ignore:overflow", "ignore:invalid value")
def test_an_overflow_skips_the_step_and_halves_the_scale():
    scaler = LossScaler(scale=2.0 ** 40, growth_interval=3)
    strategy, delta = one_step("fp16", scaler=scaler)
    assert all(not d.any() for d in delta.values())  # not one parameter moved
    assert scaler.scale == 2.0 ** 39 and scaler.skipped_steps == 1
    assert strategy.scaler_report() == {"loss_scale": 2.0 ** 39, "skipped_steps": 1}
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 30)).astype(F32), rng.integers(0, 10, 64)
    while scaler.clean_steps == 0:
        strategy.train_step(x, y, 64)  # halves until the gradients fit in float16
    scale = scaler.scale
    assert scale <= 2.0 ** 24 and all(np.isfinite(p).all() for p in strategy.full_parameters()
                                      .values())
    for _ in range(2):  # growth_interval clean steps in a row double it
        strategy.train_step(x, y, 64)
    assert scaler.scale == 2 * scale


def test_loss_scaler_grows_after_clean_steps_and_backs_off():
    s = LossScaler(scale=8.0, growth_interval=2)
    assert [s.update(False), s.scale, s.update(False), s.scale] == [True, 8.0, True, 16.0]
    assert [s.update(True), s.scale, s.skipped_steps, s.clean_steps] == [False, 8.0, 1, 0]
    restored = LossScaler()
    restored.load_state_dict(s.state_dict())
    assert restored.state_dict() == s.state_dict()
    with pytest.raises(ValueError):
        LossScaler(scale=0)


def test_scaled_and_unscaled_fp16_steps_agree_when_nothing_overflows():
    _, small = one_step("fp16", scaler=LossScaler(scale=1.0))
    _, scaled = one_step("fp16", scaler=LossScaler(scale=2.0 ** 10))
    for k in small:
        assert np.linalg.norm(scaled[k] - small[k]) <= 0.01 * np.linalg.norm(small[k])


def vote_worker(comm):
    mine = np.ones(3) if comm.rank == 0 else np.array([1.0, np.inf, 1.0])
    return overflowed([mine], comm), overflowed([np.ones(3)], comm)


@pytest.mark.timeout(60)
def test_every_rank_skips_when_one_rank_overflows():
    """With ZeRO a rank sees only its block of the gradients: the overflow is voted on."""
    assert launch(vote_worker, 3, timeout_s=30) == [(True, False)] * 3


def test_16_bit_activations_take_half_the_bytes():
    sizes = (30, 48, 48, 10)
    plain = one_step("fp32", sizes)[0].memory_bytes()["activations_peak_bytes"]
    for name in ("bf16", "fp16"):
        low = one_step(name, sizes)[0].memory_bytes()
        assert low["activations_peak_bytes"] == plain // 2 + 64 * 10 * 4  # + float32 logits


def layout_worker(comm, layout, precision):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(48, 12)).astype(F32), rng.integers(0, 5, 48)
    strategy = ParallelStrategy(Mesh(comm, *layout), ml.nn.mlp([12, 16, 16, 5], seed=3),
                                lambda ps: ml.optim.SGD(ps, lr=0.5), precision=precision,
                                micro_batches=2)
    for step in range(3):
        idx = strategy.local_indices(np.arange(16 * step, 16 * step + 16))
        strategy.train_step(x[idx], y[idx], 16)
    out = strategy.full_parameters()
    strategy.mesh.close()
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout, backend", [((1, 2, 2), "shm"), ((2, 1, 1), "shm"),
                                             pytest.param((2, 2, 1), "mpi",
                                                          marks=pytest.mark.mpi)])
def test_16_bit_runs_on_tensor_pipeline_and_mpi_layouts(layout, backend):
    """bf16 and fp16 over dp, tp × pp (16-bit activations between stages) and MPI: the whole
    parameters stay near the float32 run's (the sums differ from one process's in order)."""
    if backend == "mpi":
        pytest.importorskip("mpi4py")
    size = int(np.prod(layout))
    start = ml.nn.mlp([12, 16, 16, 5], seed=3).state_dict()
    ref = launch(layout_worker, size, args=(layout, "fp32"), backend=backend, timeout_s=60)[0]
    for name, tolerance in (("bf16", 0.10), ("fp16", 0.02)):  # on the change of 3 steps
        got = launch(layout_worker, size, args=(layout, name), backend=backend, timeout_s=60)
        for k in ref:
            moved = ref[k] - start[k]
            assert np.linalg.norm(got[0][k] - ref[k]) <= tolerance * np.linalg.norm(moved), k
            assert all(np.array_equal(r[k], got[0][k]) for r in got)
