"""optim: SGD (momentum, weight decay) and Adam against hand-computed NumPy over several steps,
in-place float32 updates, settable lr, state dicts (resume is bit-exact) and their errors."""

from __future__ import annotations

import numpy as np
import pytest

import minilepton as ml
from minilepton.nn import Parameter, StateDictError, mlp
from minilepton.nn import functional as F
from minilepton.optim import SGD, Adam, Optimizer

STEPS = 5


def _params_and_grads(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    params = [Parameter(rng.standard_normal((3, 2)).astype(dtype)),
              Parameter(rng.standard_normal(4).astype(dtype))]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(STEPS)]
    return params, grads


def _run(opt, params, grads):
    arrays = [p.data for p in params]
    for step_grads in grads:
        opt.zero_grad()
        for p, g in zip(params, step_grads):
            p.grad = g.copy()
        opt.step()
    assert all(p.data is a for p, a in zip(params, arrays))  # updated in place


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.0, 0.1),
                                                   (0.8, 0.05)])
def test_sgd_matches_hand_computed_pytorch_convention(momentum, weight_decay):
    params, grads = _params_and_grads()
    expected = [p.data.copy() for p in params]
    buffers = [None] * len(params)
    lr = 0.1
    for step_grads in grads:
        for i, g in enumerate(step_grads):
            d = g + weight_decay * expected[i]
            if momentum:
                buffers[i] = d.copy() if buffers[i] is None else momentum * buffers[i] + d
                d = buffers[i]
            expected[i] = expected[i] - lr * d
    _run(SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay), params, grads)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_matches_hand_computed_bias_corrected_steps(weight_decay):
    params, grads = _params_and_grads(seed=1)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    expected = [p.data.copy() for p in params]
    m = [np.zeros_like(e) for e in expected]
    v = [np.zeros_like(e) for e in expected]
    for t, step_grads in enumerate(grads, start=1):
        for i, g in enumerate(step_grads):
            g = g + weight_decay * expected[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g**2
            m_hat, v_hat = m[i] / (1 - b1**t), v[i] / (1 - b2**t)
            expected[i] = expected[i] - lr * m_hat / (np.sqrt(v_hat) + eps)
    opt = Adam(params, lr=lr, weight_decay=weight_decay)
    assert opt.eps == 1e-8 and opt.betas == (0.9, 0.999)
    _run(opt, params, grads)
    for p, e in zip(params, expected):
        np.testing.assert_allclose(p.data, e, rtol=1e-12, atol=1e-14)
    assert [s["step"] for s in opt.state] == [STEPS, STEPS]


def test_adam_first_step_moves_each_weight_by_about_lr():
    p = Parameter(np.array([1.0, -2.0, 3.0]))
    p.grad = np.array([1e-3, -50.0, 7.0])
    Adam([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [0.9, -1.9, 2.9], atol=2e-6)  # eps shows at |g| = 1e-3


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=np.float64(0.1), momentum=0.9,
                                                 weight_decay=np.float64(0.01)),
                                  lambda ps: Adam(ps, lr=np.float64(0.01), weight_decay=0.01)])
def test_float32_parameters_and_state_stay_float32(make):
    params, grads = _params_and_grads(dtype=np.float32)
    opt = make(params)
    opt.lr = np.float64(opt.lr)  # a NumPy float64 lr must not promote the update
    _run(opt, params, grads)
    assert all(p.dtype == np.float32 for p in params)
    for state in opt.state:
        assert all(v.dtype == np.float32 for k, v in state.items() if k != "step")


def test_parameters_without_a_gradient_are_skipped_and_lr_is_settable():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    opt = SGD([a, b], lr=1.0)
    a.grad = np.ones(2)
    opt.step()
    np.testing.assert_array_equal(b.data, 1.0)
    np.testing.assert_array_equal(a.data, 0.0)
    opt.lr = 0.5
    opt.step()
    np.testing.assert_array_equal(a.data, -0.5)
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    assert opt.state[1] == {}


def test_step_records_no_graph():
    model = mlp([3, 2], seed=0, dtype="float64")
    opt = SGD(model.parameters(), lr=0.1)
    F.mse(model(ml.Tensor(np.ones((2, 3)))), np.zeros((2, 2))).backward()
    opt.step()
    assert all(p.is_leaf and p.requires_grad for p in model.parameters())


# ------------------------------------------------------------------ state dicts
@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.05, momentum=0.9, weight_decay=1e-3),
                                  lambda ps: Adam(ps, lr=0.01, betas=(0.8, 0.99))])
def test_resuming_from_state_dicts_is_bit_exact(make):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 3, 16)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(ml.Tensor(x)), y).backward()
            opt.step()

    model = mlp([4, 5, 3], seed=0)
    opt = make(model.parameters())
    train(model, opt, 3)
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    train(model, opt, 4)

    resumed = mlp([4, 5, 3], seed=99)
    resumed_opt = make(resumed.parameters())
    resumed_opt.lr = 123.0  # restored from the state dict
    resumed.load_state_dict(saved_model)
    resumed_opt.load_state_dict(saved_opt)
    train(resumed, resumed_opt, 4)
    for (name, p), q in zip(model.named_parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    assert resumed_opt.state_dict()["state"][0]["step"] == 7


def test_state_dict_contents_are_copies_with_hyperparameters():
    params, grads = _params_and_grads()
    opt = Adam(params, lr=0.02)
    _run(opt, params, grads[:2])
    state = opt.state_dict()
    assert state["type"] == "Adam"
    assert state["hyperparameters"] == {"lr": 0.02, "betas": (0.9, 0.999), "eps": 1e-8,
                                        "weight_decay": 0.0}
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    state["state"][0]["exp_avg"][...] = 0.0
    assert np.any(opt.state[0]["exp_avg"] != 0.0)
    loaded = Adam(params)
    loaded.load_state_dict(state)
    assert loaded.lr == 0.02
    state["state"][1]["exp_avg"][...] = 7.0  # the loaded state is a copy too
    assert not np.any(loaded.state[1]["exp_avg"] == 7.0)


def test_bad_optimizer_state_dicts_fail_clearly_and_change_nothing():
    params, grads = _params_and_grads()
    opt = SGD(params, lr=0.1, momentum=0.9)
    _run(opt, params, grads[:1])
    good = opt.state_dict()
    with pytest.raises(StateDictError, match="SGD state dict cannot be loaded into Adam"):
        Adam(params).load_state_dict(good)
    wrong_shape = {**good, "state": {0: {"step": 1, "momentum_buffer": np.zeros(5)}}}
    with pytest.raises(StateDictError, match=r"state\[0\]\['momentum_buffer'\] has shape \(5,\)"):
        opt.load_state_dict(wrong_shape)
    with pytest.raises(StateDictError, match="parameter 7"):
        opt.load_state_dict({**good, "state": {7: {"step": 1}}})
    with pytest.raises(StateDictError, match=r"missing hyperparameters \['momentum'\]"):
        opt.load_state_dict({**good, "hyperparameters": {"lr": 0.1, "weight_decay": 0.0}})
    assert opt.state_dict()["state"][0]["step"] == 1 and opt.lr == 0.1


def test_constructor_checks():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    with pytest.raises(ValueError, match="twice"):
        SGD([p, p], lr=0.1)
    with pytest.raises(TypeError, match="requires grad"):
        SGD([ml.Tensor(np.ones(2))], lr=0.1)
    with pytest.raises(ValueError):
        SGD([p], lr=-1.0)
    with pytest.raises(ValueError):
        Adam([p], betas=(1.0, 0.9))
    assert isinstance(SGD([p], lr=0.1), Optimizer)
    assert "lr=0.1" in repr(SGD([p], lr=0.1))


@pytest.mark.parametrize("make", [lambda ps: ml.optim.Adam(ps, lr=1e-3),
                                  lambda ps: ml.optim.SGD(ps, lr=1e-2, momentum=0.9)],
                         ids=["adam", "sgd-momentum"])
def test_decayed_moments_are_flushed_out_of_the_subnormal_range(make, monkeypatch):
    """A weight whose gradient stays 0 decays into subnormals; flushing them every 32 steps
    keeps the update fast and leaves every parameter bit where it would have been."""
    from minilepton.optim import adam, sgd
    grad = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    grad[:20] = 0  # after the first step, these rows never see a gradient again

    def run():
        p = ml.Tensor(np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32),
                      requires_grad=True)
        opt = make([p])
        for t in range(1024):
            p.grad = grad if t else np.ones_like(grad)
            opt.step()
        state = [a for a in opt.state[0].values() if isinstance(a, np.ndarray)]
        return p.data.copy(), state
    flushed, state = run()
    tiny = np.finfo(np.float32).tiny
    assert all(not np.any((a != 0) & (np.abs(a) < tiny)) for a in state)
    for module in (adam, sgd):
        monkeypatch.setattr(module, "FLUSH_EVERY", 10**9)
    unflushed, state = run()
    assert any(np.any((a != 0) & (np.abs(a) < tiny)) for a in state)  # the case is real
    assert np.array_equal(flushed, unflushed)
