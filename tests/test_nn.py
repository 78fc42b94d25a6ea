"""nn: Module registration and names, Linear's layout and initialisation, Sequential, the model
builders, state dicts (round trips, in-place loads, clear errors), modes, and functional."""

from __future__ import annotations

import math

import numpy as np
import pytest

import minilepton as ml
from minilepton import Tensor
from minilepton.nn import (
    Linear,
    Module,
    Parameter,
    ReLU,
    Sequential,
    Sigmoid,
    StateDictError,
    Tanh,
    logistic_regression,
    mlp,
)
from minilepton.nn import functional as F


class Block(Module):
    def __init__(self):
        super().__init__()
        self.scale = Parameter(np.ones(3))
        self.fc = Linear(3, 2, rng=0)
        self.act = Tanh()
        self.note = "not a parameter"

    def forward(self, x):
        return self.act(self.fc(x * self.scale))


class Net(Module):
    def __init__(self):
        super().__init__()
        self.first = Block()
        self.shared = self.first.fc  # the same Linear registered twice
        self.head = Linear(2, 1, bias=False, rng=1)

    def forward(self, x):
        return self.head(self.first(x))


# ------------------------------------------------------------------ registration and names
def test_mlp_names_order_and_shapes():
    model = mlp([4, 5, 3])
    assert [type(m) for m in model] == [Linear, ReLU, Linear]
    assert [(n, p.shape) for n, p in model.named_parameters()] == [
        ("0.weight", (4, 5)), ("0.bias", (5,)), ("2.weight", (5, 3)), ("2.bias", (3,))]
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in model.parameters())


def test_nested_modules_are_named_by_path_and_shared_parameters_listed_once():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "first.scale", "first.fc.weight", "first.fc.bias", "head.weight"]
    assert len(net.parameters()) == 4
    assert [n for n, _ in net.named_modules()] == ["", "first", "first.fc", "first.act",
                                                    "shared", "head"]
    assert [n for n, _ in net.named_children()] == ["first", "shared", "head"]
    net.head = None  # re-assigning a name to a non-module unregisters it
    assert [n for n, _ in net.named_parameters()][-1] == "first.fc.bias"


def test_module_needs_super_init():
    class Forgot(Module):
        def __init__(self):
            self.w = Parameter(np.ones(2))

    with pytest.raises(AttributeError, match="super"):
        Forgot()


def test_parameter_is_a_tensor_that_requires_grad():
    p = Parameter(np.zeros((2, 3), dtype=np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and p.dtype == np.float32
    assert "shape=(2, 3)" in repr(p)


# ------------------------------------------------------------------ Linear
def test_linear_forward_layout_and_glorot_init():
    layer = Linear(30, 20, rng=np.random.default_rng(7))
    w, b = layer.weight.data, layer.bias.data
    assert w.shape == (30, 20) and b.shape == (20,)
    assert w.dtype == b.dtype == ml.backend.default_dtype()
    limit = math.sqrt(6 / 50)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
    assert abs(w.std() - limit / math.sqrt(3)) < 0.1 * limit  # U(-a, a) has std a/√3
    np.testing.assert_array_equal(b, 0)
    x = np.random.default_rng(0).standard_normal((4, 30)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x)).data, x @ w + b, rtol=1e-6)
    assert "in_features=30" in repr(layer)


def test_linear_without_bias_and_bad_sizes():
    layer = Linear(3, 2, bias=False, rng=0)
    assert layer.bias is None and [n for n, _ in layer.named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match="positive"):
        Linear(0, 2)


def test_seeds_make_models_reproducible_across_dtypes():
    a, b, c = mlp([6, 5, 4], seed=3), mlp([6, 5, 4], seed=3), mlp([6, 5, 4], seed=4)
    d = mlp([6, 5, 4], seed=3, dtype="float64")
    for (name, pa), pb, pc, pd in zip(a.named_parameters(), b.parameters(), c.parameters(),
                                      d.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert pd.dtype == np.float64
        np.testing.assert_array_equal(pa.data, pd.data.astype(np.float32))
        if name.endswith("weight"):
            assert not np.array_equal(pa.data, pc.data)
    g = np.random.default_rng(11)
    np.testing.assert_array_equal(Linear(3, 2, rng=np.random.default_rng(11)).weight.data,
                                  Linear(3, 2, rng=g).weight.data)


# ------------------------------------------------------------------ Sequential and builders
def test_sequential_indexing_slicing_and_composition():
    model = mlp([5, 4, 4, 3], activation="tanh", seed=0, dtype="float64")
    assert len(model) == 5 and isinstance(model[1], Tanh) and model[-1] is model[4]
    head = model[2:]
    assert isinstance(head, Sequential) and len(head) == 3 and head[0] is model[2]
    assert list(head.state_dict()) == ["2.weight", "2.bias", "4.weight", "4.bias"]
    x = Tensor(np.random.default_rng(0).standard_normal((6, 5)))
    np.testing.assert_array_equal(model[2:](model[:2](x)).data, model(x).data)
    assert list(iter(model)) == [model[i] for i in range(5)]
    model.append(Sigmoid())
    assert isinstance(model[5], Sigmoid)
    with pytest.raises(TypeError, match="Modules"):
        Sequential(Linear(2, 2), "relu")


def test_mlp_activations_and_errors():
    assert isinstance(mlp([3, 3, 2], activation="sigmoid")[1], Sigmoid)
    assert isinstance(mlp([3, 3, 2], activation=Tanh)[1], Tanh)
    assert len(mlp([3, 2])) == 1
    with pytest.raises(ValueError, match="activation"):
        mlp([3, 3, 2], activation="gelu")
    with pytest.raises(ValueError, match="at least"):
        mlp([3])


def test_logistic_regression_gives_probabilities():
    model = logistic_regression(4, seed=0)
    assert [type(m) for m in model] == [Linear, Sigmoid]
    probs = model(Tensor(np.random.default_rng(0).standard_normal((7, 4)) * 10))
    assert probs.shape == (7, 1) and np.all((probs.data >= 0) & (probs.data <= 1))


def test_an_mlp_learns_a_small_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)  # XOR-like: needs the hidden layer
    model = mlp([2, 16, 2], seed=0)
    opt = ml.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        loss = F.cross_entropy(model(Tensor(x)), y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2


# ------------------------------------------------------------------ state dicts
def test_state_dict_round_trip_copies_and_loads_in_place():
    a, b = mlp([4, 3, 2], seed=0), mlp([4, 3, 2], seed=1)
    state = a.state_dict()
    state["0.weight"][...] = 5.0  # a copy: the model is unchanged
    assert not np.any(a[0].weight.data == 5.0)
    state = a.state_dict()
    arrays = [p.data for p in b.parameters()]
    b.load_state_dict(state)
    assert [p.data for p in b.parameters()] == arrays  # the same array objects, filled
    for name, p in b.named_parameters():
        np.testing.assert_array_equal(p.data, state[name])
        assert p.data is not state[name]
    x = Tensor(np.ones((2, 4), dtype=np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_errors_name_the_key_and_change_nothing():
    model = mlp([4, 3, 2], seed=0)
    before = model.state_dict()
    good = model.state_dict()
    bad_shape = dict(good, **{"2.weight": np.zeros((2, 3))})
    with pytest.raises(StateDictError, match=r"'2\.weight' has shape \(2, 3\).*\(3, 2\)"):
        model.load_state_dict(bad_shape)
    missing = {k: v for k, v in good.items() if k != "0.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['0\.bias'\]"):
        model.load_state_dict(missing)
    with pytest.raises(StateDictError, match=r"unexpected keys \['extra'\]"):
        model.load_state_dict(dict(good, extra=np.zeros(1)))
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[name])


def test_state_dict_of_float64_checkpoint_loads_into_float32_model():
    model = mlp([3, 2], seed=0)
    state = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    assert all(p.dtype == np.float32 for p in model.parameters())


# ------------------------------------------------------------------ modes, grads, devices
def test_train_eval_and_zero_grad():
    net = Net()
    assert net.training and net.first.fc.training
    assert net.eval() is net and not net.training and not net.first.act.training
    net.train()
    assert net.first.act.training
    net(Tensor(np.ones((2, 3)))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_cpu_keeps_the_model_and_unknown_devices_fail():
    model = mlp([3, 2], seed=0)
    arrays = [p.data for p in model.parameters()]
    assert model.to("cpu") is model
    assert all(p.data is a for p, a in zip(model.parameters(), arrays))
    with pytest.raises(ml.backend.DeviceError):
        model.to("tpu")


@pytest.mark.gpu
def test_to_gpu_trains_like_the_cpu():
    if not ml.backend.gpu_available():
        pytest.skip("needs CuPy and a CUDA GPU")
    x = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    y = np.arange(8) % 3
    results = []
    for device in ("cpu", "gpu"):
        model = mlp([5, 4, 3], seed=0).to(device)
        opt = ml.optim.Adam(model.parameters(), lr=0.01)
        xp = ml.backend.namespace(device)
        for _ in range(3):
            opt.zero_grad()
            loss = F.cross_entropy(model(Tensor(xp.asarray(x))), xp.asarray(y))
            loss.backward()
            opt.step()
        assert all(p.device == device for p in model.parameters())
        results.append(model.to("cpu").state_dict())
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ functional
def test_functional_matches_the_tensor_methods_and_numpy():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 4)))
    np.testing.assert_array_equal(F.relu(x).data, x.relu().data)
    np.testing.assert_array_equal(F.sigmoid(x).data, x.sigmoid().data)
    np.testing.assert_array_equal(F.tanh(x).data, np.tanh(x.data))
    np.testing.assert_allclose(F.softmax(x).data.sum(axis=1), 1.0)
    t = rng.standard_normal((3, 4))
    np.testing.assert_allclose(F.mse(x, t).item(), ((x.data - t) ** 2).mean())
    np.testing.assert_allclose(F.mse(x, t, reduction="sum").item(), ((x.data - t) ** 2).sum())
    z = Tensor(rng.standard_normal((5, 1)))
    y = (rng.random((5, 1)) < 0.5).astype(np.float64)
    np.testing.assert_allclose(F.binary_cross_entropy(z.sigmoid(), y).item(),
                               F.binary_cross_entropy_with_logits(z, y).item())
