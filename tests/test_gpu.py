"""The same computation on a GPU (CuPy) as on the CPU (NumPy). Run with ``pytest -m gpu``.

Without CuPy or a CUDA GPU every test here is skipped with the reason; on a machine that must
have one (``benchmarks/gpu_check.sh`` sets ``MINILEPTON_REQUIRE_GPU=1``) they fail instead.

- every op's forward and gradient on CuPy equal NumPy's in float64 (rtol 1e-10);
- a training run on the GPU ends with the CPU's parameters within float32 tolerance;
- data-parallel workers sharing one GPU (collectives staged through host shared memory) end
  with the parameters of one process, by hand and through ``minilepton train --workers 2``.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_device import dp_sgd_steps  # the same data-parallel SGD, run here on a real GPU

import minilepton as ml
from minilepton import backend
from minilepton.autograd import losses

pytestmark = pytest.mark.gpu


# ---------------------------------------------------------------- every op, both devices
def _labels(xp):
    return xp.asarray(np.array([2, 0, 1, 2]))


OPS = {  # name -> (function of tensors (and the array module), shapes of the inputs)
    "add_broadcast": (lambda a, b, xp: a + b, [(4, 3), (3,)]),
    "sub": (lambda a, b, xp: a - b, [(4, 3), (4, 1)]),
    "rsub_scalar": (lambda a, xp: 2.5 - a, [(4, 3)]),
    "neg": (lambda a, xp: -a, [(4, 3)]),
    "mul": (lambda a, b, xp: a * b, [(4, 3), (1, 3)]),
    "div": (lambda a, b, xp: a / (b * b + 1.0), [(4, 3), (4, 3)]),
    "rdiv_scalar": (lambda a, xp: 1.5 / (a * a + 1.0), [(4, 3)]),
    "pow": (lambda a, xp: (a * a + 1.0) ** 1.5, [(4, 3)]),
    "matmul_2d": (lambda a, b, xp: a @ b, [(4, 3), (3, 5)]),
    "matmul_batched": (lambda a, b, xp: a @ b, [(2, 4, 3), (3, 5)]),
    "matmul_vector_left": (lambda a, b, xp: a @ b, [(3,), (3, 5)]),
    "matmul_vector_right": (lambda a, b, xp: a @ b, [(4, 3), (3,)]),
    "matmul_dot": (lambda a, b, xp: a @ b, [(3,), (3,)]),
    "exp": (lambda a, xp: a.exp(), [(4, 3)]),
    "log": (lambda a, xp: (a * a + 0.5).log(), [(4, 3)]),
    "relu": (lambda a, xp: a.relu(), [(4, 3)]),
    "sigmoid": (lambda a, xp: a.sigmoid(), [(4, 3)]),
    "tanh": (lambda a, xp: a.tanh(), [(4, 3)]),
    "sum_all": (lambda a, xp: a.sum(), [(4, 3)]),
    "sum_axis": (lambda a, xp: a.sum(axis=1), [(4, 3)]),
    "mean_keepdims": (lambda a, xp: a.mean(axis=0, keepdims=True), [(4, 3)]),
    "max_axis": (lambda a, xp: a.max(axis=1), [(4, 3)]),
    "reshape": (lambda a, xp: a.reshape(3, 4), [(4, 3)]),
    "transpose": (lambda a, xp: a.transpose(1, 0, 2), [(2, 4, 3)]),
    "T": (lambda a, xp: a.T, [(4, 3)]),
    "getitem_slice": (lambda a, xp: a[1:3, ::2], [(4, 3)]),
    "getitem_repeated_rows": (lambda a, xp: a[xp.asarray(np.array([0, 2, 0, 0]))], [(4, 3)]),
    "concatenate": (lambda a, b, xp: ml.concatenate([a, b], axis=1), [(4, 3), (4, 2)]),
    "split": (lambda a, xp: ml.split(a, [1, 2], axis=1)[1] * 2.0, [(4, 3)]),
    "stack": (lambda a, b, xp: ml.stack([a, b], axis=1), [(4, 3), (4, 3)]),
    "log_softmax": (lambda a, xp: losses.log_softmax(a, axis=1), [(4, 3)]),
    "cross_entropy": (lambda a, xp: losses.cross_entropy(a, _labels(xp)), [(4, 3)]),
    "cross_entropy_sum": (lambda a, xp: losses.cross_entropy(a, _labels(xp), reduction="sum"),
                          [(4, 3)]),
    "binary_cross_entropy": (
        lambda a, xp: losses.binary_cross_entropy(a.sigmoid(), xp.asarray(np.eye(4, 3))),
        [(4, 3)]),
    "bce_with_logits": (
        lambda a, xp: losses.binary_cross_entropy_with_logits(a, xp.asarray(np.eye(4, 3))),
        [(4, 3)]),
}


def _forward_backward(fn, arrays, xp):
    tensors = [ml.Tensor(xp.asarray(a), requires_grad=True) for a in arrays]
    out = fn(*tensors, xp)
    cotangent = np.random.default_rng(7).standard_normal(out.shape)
    out.backward(xp.asarray(cotangent))
    return out.numpy(), [backend.to_numpy(t.grad) for t in tensors], tensors


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_gradient_on_gpu_equals_numpy(cp, name):
    fn, shapes = OPS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    arrays = [rng.standard_normal(shape) for shape in shapes]
    out_cpu, grads_cpu, _ = _forward_backward(fn, arrays, np)
    out_gpu, grads_gpu, tensors = _forward_backward(fn, arrays, cp)
    assert all(t.device == "gpu" and isinstance(t.grad, cp.ndarray) for t in tensors)
    np.testing.assert_allclose(out_gpu, out_cpu, rtol=1e-10, atol=1e-12, err_msg=f"{name} forward")
    for i, (g_gpu, g_cpu) in enumerate(zip(grads_gpu, grads_cpu)):
        assert g_gpu.dtype == np.float64
        np.testing.assert_allclose(g_gpu, g_cpu, rtol=1e-10, atol=1e-12,
                                   err_msg=f"{name}: gradient of input {i}")


def test_mixing_devices_is_a_clear_error(cp):
    a = ml.Tensor(np.ones((2, 2)))
    b = ml.Tensor(cp.ones((2, 2)))
    with pytest.raises(backend.DeviceError, match="move both to one device"):
        a @ b


# ---------------------------------------------------------------- training
def _data(n=512, features=20, classes=4, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, :classes].argmax(axis=1)).astype(np.int64)
    return x, y, x[:128].copy(), y[:128].copy()


def test_training_on_gpu_equals_cpu_within_float32(cp, tmp_path):
    from minilepton.engine import TrainConfig, train
    params = {}
    for device in ("cpu", "gpu"):
        cfg = TrainConfig(device=device, hidden=(32,), epochs=2, batch_size=64, optimizer="sgd",
                          lr=0.1, momentum=0.9, seed=5, save=str(tmp_path / f"{device}.npz"),
                          verbose=False)
        metrics = train(cfg, arrays=_data())
        assert np.isfinite(metrics["test_loss"])
        with np.load(cfg.save) as saved:
            params[device] = {k: saved[k] for k in saved.files}
    assert params["gpu"].keys() == params["cpu"].keys() and params["cpu"]
    for name, value in params["cpu"].items():
        np.testing.assert_allclose(params["gpu"][name], value, rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_model_and_optimizer_state_live_on_the_gpu(cp):
    model = ml.nn.mlp([20, 16, 4], seed=1).to("gpu")
    opt = ml.optim.Adam(model.parameters(), lr=1e-3)
    x, y, _, _ = _data(64)
    loss = ml.nn.functional.cross_entropy(model(ml.Tensor(cp.asarray(x))), cp.asarray(y))
    loss.backward()
    opt.step()
    for p in model.parameters():
        assert isinstance(p.data, cp.ndarray) and isinstance(p.grad, cp.ndarray)
    moments = [v for state in opt.state for v in state.values() if not isinstance(v, int)]
    assert moments and all(isinstance(v, cp.ndarray) for v in moments)


# ---------------------------------------------------------------- data parallel on one GPU
@pytest.mark.timeout(300)
def test_data_parallel_workers_on_one_gpu_equal_one_process(cp):
    x, y, _, _ = _data(256)
    x = x.astype(np.float64)
    single, _ = dp_sgd_steps(None, x, y, steps=4, batch=64)
    results = ml.cluster.launch(dp_sgd_steps, 2, args=(x, y, 4, 64), start_method="spawn")
    for rank, (params, staging) in enumerate(results):
        for name, value in single.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank}: {name}")
        n_params = len(single)
        assert staging["d2h_copies"] == staging["h2d_copies"] == 4 * n_params
        assert staging["d2h_bytes"] == 4 * sum(v.nbytes for v in single.values())


@pytest.mark.timeout(300)
def test_train_with_data_parallel_workers_on_the_gpu_matches_the_cpu(cp, tmp_path):
    """``minilepton train --workers 2 --device gpu``: spawned workers, staged buckets."""
    from minilepton.engine import run as runner
    from minilepton.engine.config import TrainConfig
    x, y, xt, yt = _data(512)
    arrays = (x.astype(np.float64), y, xt.astype(np.float64), yt)
    params = {}
    for device in ("cpu", "gpu"):
        cfg = TrainConfig(device=device, hidden=(32,), epochs=2, batch_size=64, optimizer="adam",
                          lr=1e-2, seed=5, dtype="float64", workers=2, verbose=False,
                          save=str(tmp_path / f"{device}.npz"))
        metrics = runner.train(cfg, arrays)
        with np.load(cfg.save) as saved:
            params[device] = {k: saved[k] for k in saved.files}
    assert metrics["staging"]["d2h_copies"] > 0 and metrics["staging"]["h2d_copies"] > 0
    for name, value in params["cpu"].items():
        np.testing.assert_allclose(params["gpu"][name], value, rtol=1e-8, atol=1e-10,
                                   err_msg=name)
