"""The rank grid, layout checks, and hybrid (dp × tp × pp) training equal to the serial model."""

import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.engine.config import TrainConfig
from minilepton.parallel.mesh import Mesh, check_layout, grid

TOL = {"float64": 1e-10, "float32": 1e-5}


def launch(fn, world_size, args=(), backend="shm"):
    from minilepton.cluster import launch as _launch
    return _launch(fn, world_size, args=args, backend=backend, timeout_s=90)


def close(a, b, dtype) -> bool:
    rtol = TOL[dtype]
    return np.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


# ---------------------------------------------------------------- pure parts
def test_grid_is_one_reshaped_range():
    g = grid(dp=2, tp=2, pp=3)
    assert g.shape == (2, 3, 2) and sorted(g.ravel()) == list(range(12))
    assert list(g[1, 2, :]) == [10, 11]  # a tensor group is neighbouring ranks
    assert Mesh.grid_text(2, 2, 1) == "dp 0: pp 0: [0 1]\ndp 1: pp 0: [2 3]"


@pytest.mark.parametrize("kwargs, message", [
    (dict(workers=4, tp=2), "does not match"),
    (dict(pp=3), "more pipeline stages than the model's 2 Linear layers"),
    (dict(tp=3, hidden=(2,)), "more shards than the 2 features"),
    (dict(pp=2, batch_size=30, micro_batches=4), "--micro-batches 4 does not divide the batch"),
    (dict(dp=2, pp=2, batch_size=12, micro_batches=4), "--micro-batches 4 does not divide"),
])
def test_impossible_layouts_are_one_line_errors(kwargs, message):
    values = dict(hidden=(16,))
    values.update(kwargs)
    workers = values.pop("workers", None)
    cfg = TrainConfig(**values)
    cfg.workers = workers  # TrainConfig itself also rejects this one; check_layout must too
    with pytest.raises(ValueError, match=message) as info:
        check_layout(cfg, [784, *cfg.hidden, 10])
    assert "\n" not in str(info.value)


def test_possible_layouts_pass():
    assert check_layout(TrainConfig(dp=2, tp=2), [784, 128, 10]) == 4
    assert check_layout(TrainConfig(pp=2, micro_batches=8), [784, 128, 10]) == 2
    assert check_layout(TrainConfig(tp=4, hidden=(8, 8)), [784, 8, 8, 10]) == 4


# ---------------------------------------------------------------- sub-communicators
def _mesh_worker(comm, dp, tp, pp):
    mesh = Mesh(comm, dp, tp, pp)
    members = {}
    for name in ("tp", "pp", "dp"):
        sub = getattr(mesh, f"{name}_comm")
        members[name] = [int(v) for v in sub.allgather(np.array([comm.rank], np.int64))]
    return mesh.coords, members


@pytest.mark.timeout(60)
def test_mesh_groups_follow_the_grid():
    dp, tp, pp = 2, 2, 2
    g = grid(dp, tp, pp)
    for rank, ((d, p, t), members) in enumerate(launch(_mesh_worker, 8, (dp, tp, pp))):
        assert g[d, p, t] == rank
        assert members == {"tp": list(g[d, p, :]), "pp": list(g[d, :, t]),
                           "dp": list(g[:, p, t])}


# ---------------------------------------------------------------- hybrid equals serial
def _hybrid_worker(comm, layout, cases):
    """Train serial and model-parallel side by side for a few steps; gathered results."""
    from minilepton.optim import SGD, Adam
    from minilepton.parallel.strategy import ParallelStrategy, SingleProcess
    dp, tp, pp = layout
    out = []
    for sizes, dtype, seed, batch, micro_batches, schedule, opt in cases:
        make = (lambda ps: Adam(ps, lr=0.01)) if opt == "adam" else (lambda ps: SGD(ps, lr=0.3))
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(3 * batch, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], 3 * batch)
        ref_model = ml.nn.mlp(sizes, seed=seed, dtype=dtype)
        ref = SingleProcess(ref_model, make(ref_model.parameters()))
        par = ParallelStrategy(Mesh(comm, dp, tp, pp), ml.nn.mlp(sizes, seed=seed, dtype=dtype),
                               make, micro_batches=micro_batches, schedule=schedule)
        losses = []
        for step in range(3):
            idx = np.arange(step * batch, (step + 1) * batch)
            a = ref.train_step(x[idx], y[idx], batch)
            local = par.local_indices(idx)
            b = par.reduce_stats(par.train_step(x[local], y[local], batch))
            losses.append((a.loss_sum, b.loss_sum, a.count, b.count))
        out.append((losses, ref.full_parameters(), par.full_parameters(),
                    ref.evaluate(x, y, 5), par.evaluate(x, y, 5)))
        par.mesh.close()
    return out


layouts = st.sampled_from([(2, 2, 1), (2, 1, 2), (1, 2, 2)])
hybrid_cases = st.lists(st.tuples(
    st.lists(st.integers(4, 9), min_size=4, max_size=5), st.sampled_from(["float64", "float32"]),
    st.integers(0, 99), st.integers(1, 4).map(lambda k: 4 * k), st.sampled_from([1, 2]),
    st.sampled_from(["gpipe", "1f1b"]), st.sampled_from(["sgd", "adam"])), min_size=1, max_size=2)


def _check_hybrid(results, cases):
    for rank_results in results:
        for case, (losses, ref, par, ref_eval, par_eval) in zip(cases, rank_results):
            dtype = case[1]
            for a, b, na, nb in losses:
                assert na == nb and b == pytest.approx(a, rel=TOL[dtype])
            assert ref.keys() == par.keys()
            for name in ref:
                assert close(par[name], ref[name], dtype), (case, name)
            assert par_eval.count == ref_eval.count and par_eval.correct == ref_eval.correct


@pytest.mark.timeout(150)
@settings(max_examples=3, deadline=None)
@given(layouts, hybrid_cases)
def test_hybrid_equals_serial(layout, cases):
    _check_hybrid(launch(_hybrid_worker, int(np.prod(layout)), (layout, cases)), cases)


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="needs mpiexec")
def test_model_parallel_over_mpi():
    pytest.importorskip("mpi4py")
    cases = [([6, 8, 7, 5], "float64", 3, 8, 2, "1f1b", "adam")]
    for layout in ((2, 2, 1), (1, 1, 2)):
        _check_hybrid(launch(_hybrid_worker, int(np.prod(layout)), (layout, cases),
                             backend="mpi"), cases)


@pytest.mark.timeout(120)
def test_per_rank_checkpoints_resume_bit_exactly(tmp_path):
    """tp × pp on 4 workers: 1 epoch, then resume for a 2nd, equals 2 epochs straight."""
    from minilepton.engine.run import train as run
    rng = np.random.default_rng(0)
    arrays = (rng.random((96, 12)), rng.integers(0, 10, 96), rng.random((20, 12)),
              rng.integers(0, 10, 20))
    common = dict(hidden=(16, 16), batch_size=16, tp=2, pp=2, micro_batches=2,
                  schedule="1f1b", dtype="float64", verbose=False)
    run(TrainConfig(epochs=2, save=str(tmp_path / "straight.npz"), **common), arrays, 100)
    ck = str(tmp_path / "ck")
    run(TrainConfig(epochs=1, checkpoint_dir=ck, **common), arrays, 100)
    run(TrainConfig(epochs=2, checkpoint_dir=ck, resume=True, save=str(tmp_path / "resumed.npz"),
                    **common), arrays, 100)
    straight, resumed = np.load(tmp_path / "straight.npz"), np.load(tmp_path / "resumed.npz")
    assert sorted(straight) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    for name in straight:
        assert np.array_equal(straight[name], resumed[name]), name
