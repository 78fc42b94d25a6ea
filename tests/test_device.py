"""Device selection, its error messages, and GPU staging, checked on a CPU with a CuPy stand-in.

``fake_cupy`` installs a module named ``cupy`` whose arrays are NumPy arrays of a subclass that
behaves like CuPy where it matters here: it refuses to compute with plain NumPy arrays (CuPy
raises TypeError), its ``flags`` have only the three fields CuPy's have, and it has CuPy's
``get(out=)`` / ``set()`` copies. The real thing is exercised by ``tests/test_gpu.py``.
"""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

import minilepton as ml
from minilepton import backend
from minilepton.comm import ArenaFullError
from minilepton.comm.base import Communicator
from minilepton.comm.device_staging import DeviceStagingComm, wrap_for_device

STAND_IN = "stand-in"  # dp_sgd_steps(gpu=STAND_IN): install the stand-in in the worker first


class FakeGpuArray(np.ndarray):
    """Stand-in for ``cupy.ndarray``."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        outs = kwargs.get("out", ())
        if any(type(a) is np.ndarray and a.ndim > 0 for a in inputs + tuple(outs)):
            raise TypeError("Unsupported type <class 'numpy.ndarray'>")  # as CuPy says it
        plain = tuple(a.view(np.ndarray) if isinstance(a, FakeGpuArray) else a for a in inputs)
        if outs:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in outs)
        result = getattr(ufunc, method)(*plain, **kwargs)
        return (outs[0] if len(outs) == 1 else outs) if outs else _wrap(result)

    @property
    def flags(self):
        f = np.ndarray.flags.__get__(self)
        return types.SimpleNamespace(c_contiguous=f.c_contiguous, f_contiguous=f.f_contiguous,
                                     owndata=f.owndata)

    def get(self, out=None):
        if out is None:
            return self.view(np.ndarray).copy()
        np.copyto(out, self.view(np.ndarray))
        return out

    def set(self, arr):
        if arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError("set needs an array of the same shape and dtype")
        np.copyto(self.view(np.ndarray), arr)


def _wrap(x):
    """A result "on the GPU": CuPy returns 0-d arrays where NumPy returns scalars."""
    if isinstance(x, np.generic):
        x = np.asarray(x)
    return x.view(FakeGpuArray) if type(x) is np.ndarray else x


def _host(x):
    return x.view(np.ndarray) if isinstance(x, FakeGpuArray) else x


def _make_fake_cupy(n_gpus: int):
    cp = types.ModuleType("cupy")
    cp.__version__ = "0.0-stand-in"
    cp.ndarray = FakeGpuArray
    cp.used_devices, cp.syncs = [], [0]  # what Device(i).use() chose; synchronize() calls

    def fallback(name):  # everything else: NumPy's function on host views, results "on the GPU"
        fn = getattr(np, name)
        if not callable(fn) or isinstance(fn, np.ufunc):  # ufuncs dispatch to FakeGpuArray
            return fn

        def call(*args, **kwargs):
            args = [_host(a) if not isinstance(a, (list, tuple)) else type(a)(map(_host, a))
                    for a in args]
            out = fn(*args, **kwargs)
            return type(out)(map(_wrap, out)) if isinstance(out, (list, tuple)) else _wrap(out)
        return call

    cp.asarray = cp.array = lambda a, dtype=None: np.array(_host(a), dtype=dtype).view(FakeGpuArray)
    cp.asnumpy = lambda a: np.array(_host(a))
    cp.__getattr__ = fallback
    stream = types.SimpleNamespace(synchronize=lambda: cp.syncs.__setitem__(0, cp.syncs[0] + 1))
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: n_gpus),
        Device=lambda i: types.SimpleNamespace(use=lambda: cp.used_devices.append(i)),
        get_current_stream=lambda: stream)
    cupyx = types.ModuleType("cupyx")
    cupyx.scatter_add = lambda a, index, v: np.add.at(a.view(np.ndarray), index, _host(v))
    return cp, cupyx


@pytest.fixture
def fake_cupy(monkeypatch):
    """A CuPy stand-in with 2 GPUs, installed for one test (``backend`` forgets it after)."""
    cp, cupyx = _make_fake_cupy(2)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(backend, "_cupy", None)
    return cp


@pytest.fixture
def no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_said_auto_is_cpu", False)


# ---------------------------------------------------------------- choosing a device
def test_without_cupy_cpu_works_gpu_says_how_to_install_auto_falls_back(no_cupy, caplog):
    assert backend.resolve_device("cpu") == "cpu" and backend.namespace("cpu") is np
    with pytest.raises(backend.DeviceError) as info:
        backend.resolve_device("gpu")
    assert "\n" not in str(info.value) and "pip install 'minilepton[gpu]'" in str(info.value)
    with caplog.at_level("WARNING", logger="minilepton.backend"):
        assert backend.resolve_device("auto") == backend.resolve_device("auto") == "cpu"
    assert caplog.text.count("using the CPU") == 1 and not backend.gpu_initialised()
    assert type(wrap_for_device(Loopback(), "auto")) is Loopback
    with pytest.raises(backend.DeviceError, match="needs CuPy"):
        wrap_for_device(Loopback(), "gpu")


def test_unknown_device_is_one_clear_line():
    with pytest.raises(backend.DeviceError, match=r"unknown device 'tpu'; choose one of cpu, gpu, auto"):
        backend.resolve_device("tpu")
    with pytest.raises(backend.DeviceError, match="unknown device"):
        backend.resolve_device_in_launcher("cuda")


@pytest.mark.parametrize("count, expected", [
    (0, "no CUDA GPU is visible"),
    (RuntimeError("cudaErrorNoDevice"), "no CUDA GPU is usable: cudaErrorNoDevice"),
])
def test_cupy_without_a_gpu(monkeypatch, count, expected):
    cp, _ = _make_fake_cupy(0)
    if isinstance(count, Exception):
        def fail():
            raise count
        cp.cuda.runtime.getDeviceCount = fail
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(backend, "_cupy", None)
    with pytest.raises(backend.DeviceError, match=expected):
        backend.resolve_device("gpu")
    assert backend.resolve_device("auto") == "cpu"
    assert not backend.gpu_available()


def test_gpu_and_auto_with_a_gpu(fake_cupy):
    assert backend.resolve_device("gpu") == "gpu"
    assert backend.resolve_device("auto") == "gpu"
    assert backend.namespace("gpu") is fake_cupy
    assert backend.gpu_initialised()


def test_gpu_workers_spawn_and_take_local_rank_modulo_visible(fake_cupy):
    chosen = [backend.set_gpu_for_local_rank(r) for r in range(5)]
    assert chosen == [0, 1, 0, 1, 0] and fake_cupy.used_devices == chosen
    with pytest.raises(ValueError, match="non-negative integer"):
        backend.set_gpu_for_local_rank(-1)
    assert (backend.start_method_for("gpu"), backend.start_method_for("cpu")) == ("spawn", "fork")
    with pytest.raises(backend.DeviceError, match="resolve 'auto' first"):
        backend.start_method_for("auto")


def test_launcher_resolution_keeps_cuda_out_of_this_process(no_cupy, caplog):
    # the probe runs in a child Python (no CuPy installed here, or hidden by `no_cupy`)
    n, reason = backend.probe_gpu_count()
    if n:
        pytest.skip(f"this machine has a GPU ({reason}); the fallback path is not reachable")
    assert backend.resolve_device_in_launcher("cpu") == "cpu"
    with caplog.at_level("WARNING", logger="minilepton.backend"):
        assert backend.resolve_device_in_launcher("auto") == "cpu"
    assert "no usable GPU" in caplog.text
    with pytest.raises(backend.DeviceError, match=r"--device gpu: no usable GPU \(") as info:
        backend.resolve_device_in_launcher("gpu")
    assert "\n" not in str(info.value) and not backend.gpu_initialised()


def test_importing_minilepton_does_not_import_cupy():
    code = ("import sys, minilepton as ml, minilepton.nn, minilepton.optim, "
            "minilepton.comm.device_staging; print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- arrays and tensors
def test_arrays_move_and_report_their_device(fake_cupy):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    g = backend.to_device(x, "gpu")
    assert isinstance(g, FakeGpuArray) and backend.device_of(g) == "gpu"
    assert backend.xp_of(g) is fake_cupy and backend.xp_of(x) is np and backend.xp_of(2.0) is np
    assert type(backend.to_numpy(g)) is np.ndarray and np.array_equal(backend.to_numpy(g), x)
    with pytest.raises(backend.DeviceError, match="resolve 'auto' first"):
        backend.to_device(x, "auto")
    assert backend.check_same_device(g, g) == "gpu"
    with pytest.raises(backend.DeviceError, match="mixes CPU and GPU arrays"):
        backend.check_same_device(x, g, what="the update")


@pytest.mark.parametrize("op", ["+", "-", "*", "/", "@"])
def test_mixing_cpu_and_gpu_tensors_is_a_clear_error(fake_cupy, op):
    cpu = ml.Tensor(np.ones((2, 2)), requires_grad=True)
    gpu = ml.Tensor(backend.to_device(np.ones((2, 2)), "gpu"))
    for a, b in ((cpu, gpu), (gpu, cpu)):
        with pytest.raises(backend.DeviceError, match="mixes a (CPU|GPU) tensor with a (GPU|CPU) tensor"):
            eval(f"a {op} b")
    with pytest.raises(backend.DeviceError, match="mixes a GPU tensor with a CPU tensor"):
        eval(f"gpu {op} np.ones((2, 2))")  # a bare NumPy array is a CPU operand too


def test_fancy_indexing_gradient_on_the_gpu_adds_repeated_rows(fake_cupy):
    x = ml.Tensor(backend.to_device(np.arange(6.0).reshape(3, 2), "gpu"), requires_grad=True)
    x[np.array([0, 2, 0])].sum().backward()
    assert isinstance(x.grad, FakeGpuArray)
    assert np.array_equal(backend.to_numpy(x.grad), [[2.0, 2.0], [0.0, 0.0], [1.0, 1.0]])


def test_scatter_add_counts_repeated_indices(fake_cupy):
    for target in (np.zeros(4), backend.to_device(np.zeros(4), "gpu")):
        backend.scatter_add(target, np.array([1, 1, 3]), np.array([1.0, 2.0, 5.0]))
        assert np.array_equal(backend.to_numpy(target), [0.0, 3.0, 0.0, 5.0])


# ---------------------------------------------------------------- training on the stand-in
def _train_a_few_steps(device: str, optimizer: str):
    model = ml.nn.mlp([6, 5, 3], seed=0, dtype="float64").to(device)
    opt = (ml.optim.Adam(model.parameters(), lr=1e-2) if optimizer == "adam" else
           ml.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3))
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = backend.to_device(rng.standard_normal((8, 6)), device)
        y = backend.to_device(rng.integers(0, 3, 8), device)
        opt.zero_grad()
        ml.nn.functional.cross_entropy(model(ml.Tensor(x)), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_on_the_stand_in_gpu_matches_the_cpu(fake_cupy, optimizer):
    cpu, _ = _train_a_few_steps("cpu", optimizer)
    gpu, opt = _train_a_few_steps("gpu", optimizer)
    for (name, p), q in zip(gpu.named_parameters(), cpu.parameters()):
        assert p.device == "gpu" and isinstance(p.grad, FakeGpuArray), name
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
    moments = [v for state in opt.state for v in state.values() if not isinstance(v, int)]
    assert moments and all(isinstance(v, FakeGpuArray) for v in moments)


# ---------------------------------------------------------------- staging collectives
class Loopback(Communicator):
    """Rank 1 of 3 ranks that all hold the same array: the closed forms of every collective."""

    def __init__(self):
        super().__init__(rank=1, world_size=3)
        self.zeros_calls, self.sent, self.incoming = 0, [], None

    def allreduce(self, x, op="sum", algorithm=None):
        self.check_array(x)[...] *= self.world_size if op == "sum" else 1
        return x

    def reduce_scatter(self, x, op="sum"):
        return self.check_array(x).reshape(self.world_size, -1)[self.rank] * self.world_size

    def allgather(self, x):
        return np.concatenate([self.check_array(x)] * self.world_size)

    def broadcast(self, x, root=0):
        x[...] = -1.0 if self.rank != root else x
        return x

    def send(self, x, dst):
        self.sent.append(self.check_array(x).copy())

    def recv(self, x, src):
        x[...] = self.incoming
        return x

    def split(self, color, key=None):
        return Loopback()

    def zeros(self, shape, dtype=np.float32):
        self.zeros_calls += 1
        return np.zeros(shape, dtype)


def test_staged_collectives_give_the_host_results(fake_cupy):
    comm = DeviceStagingComm(Loopback())
    x_host = np.arange(6, dtype=np.float32)
    x = backend.to_device(x_host, "gpu")
    assert comm.allreduce(x) is x and np.array_equal(backend.to_numpy(x), 3 * x_host)
    block = comm.reduce_scatter(backend.to_device(x_host, "gpu"))
    assert isinstance(block, FakeGpuArray) and np.array_equal(block.get(), [6.0, 9.0])
    gathered = comm.allgather(backend.to_device(x_host[:2], "gpu"))
    assert isinstance(gathered, FakeGpuArray) and np.array_equal(gathered.get(), [0, 1] * 3)
    y = backend.to_device(x_host, "gpu")
    assert np.array_equal(comm.broadcast(y, root=1).get(), x_host)   # this rank is the root
    assert np.array_equal(comm.broadcast(y, root=0).get(), -np.ones(6))
    arena_buffers = comm.inner.zeros_calls  # a send or recv must not allocate collectively
    comm.send(backend.to_device(x_host, "gpu"), dst=0)
    assert np.array_equal(comm.inner.sent[0], x_host)
    comm.inner.incoming = x_host[::-1]
    assert np.array_equal(comm.recv(y, src=2).get(), x_host[::-1])
    assert comm.inner.zeros_calls == arena_buffers


def test_staging_counts_and_times_every_copy(fake_cupy):
    comm = DeviceStagingComm(Loopback())
    grads = backend.to_device(np.ones((4, 5), np.float32), "gpu")
    for _ in range(3):
        comm.allreduce(grads, op="mean")
    s = comm.staging
    assert (s.d2h_copies, s.h2d_copies) == (3, 3)
    assert s.d2h_bytes == s.h2d_bytes == 3 * 4 * 5 * 4
    assert s.d2h_seconds >= 0 and s.h2d_seconds >= 0
    assert fake_cupy.syncs[0] >= 6, "every copy is timed after a device synchronisation"
    assert comm.inner.zeros_calls == 1, "the host buffer is taken from the arena once, then reused"
    events = []
    comm.hooks.append(lambda event, op, rank, t_s, nbytes: events.append((event, op, nbytes)))
    comm.allreduce(grads)
    assert [e[:2] for e in events] == [("start", "stage_d2h"), ("end", "stage_d2h"),
                                       ("start", "stage_h2d"), ("end", "stage_h2d")]
    s.reset()
    host = np.ones(4)  # host arrays pass straight through: no copy, no staging buffer
    assert comm.allreduce(host) is host and np.array_equal(host, 3 * np.ones(4))
    assert s.as_dict() == {"d2h_copies": 0, "d2h_bytes": 0, "d2h_seconds": 0.0,
                           "h2d_copies": 0, "h2d_bytes": 0, "h2d_seconds": 0.0}


def test_staging_rejects_misuse(fake_cupy):
    comm = DeviceStagingComm(Loopback())
    strided = backend.to_device(np.ones((4, 4)), "gpu")[:, ::2]
    with pytest.raises(ValueError, match="allreduce needs a C-contiguous array"):
        comm.allreduce(strided)
    with pytest.raises(ValueError, match="unknown reduction op 'prod'"):
        comm.allreduce(backend.to_device(np.ones(2), "gpu"), op="prod")
    with pytest.raises(TypeError, match="already staged"):
        DeviceStagingComm(comm)
    comm.inner.zeros = lambda shape, dtype: (_ for _ in ()).throw(ArenaFullError("full"))
    x = backend.to_device(np.ones(3), "gpu")  # a full arena: private host buffers instead
    assert np.array_equal(comm.allreduce(x).get(), 3 * np.ones(3))


def test_wrap_for_device_and_the_wrapped_protocol(fake_cupy):
    inner = Loopback()
    assert wrap_for_device(inner, "cpu") is inner
    comm = wrap_for_device(inner, "gpu")
    assert isinstance(comm, DeviceStagingComm) and wrap_for_device(comm, "gpu") is comm
    assert (comm.rank, comm.world_size, comm.stats) == (1, 3, inner.stats)
    assert isinstance(comm.zeros((2, 3)), FakeGpuArray)
    sub = comm.split(color=0)
    assert isinstance(sub, DeviceStagingComm) and isinstance(sub.inner, Loopback)
    assert comm.zeros_calls == 0  # unknown attributes are the inner communicator's
    comm.close()


# ---------------------------------------------------------------- workers sharing a GPU
def dp_sgd_steps(comm, x, y, steps: int, batch: int, gpu: str = "cupy"):
    """Data-parallel SGD on a GPU (one process when ``comm`` is None): each rank takes its
    shard of every global batch, sums its loss over the shard / batch, and the staged
    all-reduce adds the ranks' gradients. Returns (parameters, staging counters)."""
    if gpu == STAND_IN:
        cp, cupyx = _make_fake_cupy(1)
        sys.modules["cupy"], sys.modules["cupyx"] = cp, cupyx
    rank, size = (comm.rank, comm.world_size) if comm is not None else (0, 1)
    if comm is not None:
        backend.set_gpu_for_local_rank(rank)
        comm = wrap_for_device(comm, "gpu")
    xp = backend.namespace("gpu")
    model = ml.nn.mlp([x.shape[1], 16, 4], seed=2, dtype="float64").to("gpu")
    opt = ml.optim.SGD(model.parameters(), lr=0.2, momentum=0.5)
    for step in range(steps):
        rows = np.arange(step * batch, (step + 1) * batch)[rank::size]
        opt.zero_grad()
        logits = model(ml.Tensor(xp.asarray(x[rows])))
        loss = ml.nn.functional.cross_entropy(logits, xp.asarray(y[rows]), reduction="sum")
        (loss * (1.0 / batch)).backward()
        if comm is not None:
            for p in model.parameters():
                comm.allreduce(p.grad)
        opt.step()
    staging = comm.staging.as_dict() if comm is not None else None
    return {name: p.numpy() for name, p in model.named_parameters()}, staging


@pytest.mark.timeout(120)
def test_spawned_workers_sharing_a_stand_in_gpu_equal_one_process(fake_cupy):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((96, 10)), rng.integers(0, 4, 96)
    single, _ = dp_sgd_steps(None, x, y, steps=3, batch=32)  # on this test's stand-in
    results = ml.cluster.launch(dp_sgd_steps, 2, args=(x, y, 3, 32, STAND_IN),
                                start_method="spawn")
    for rank, (params, staging) in enumerate(results):
        for name, value in single.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-10, atol=1e-12,
                                       err_msg=f"rank {rank}: {name}")
        assert staging["d2h_copies"] == staging["h2d_copies"] == 3 * len(single)
        assert staging["h2d_bytes"] == 3 * sum(v.nbytes for v in single.values())
