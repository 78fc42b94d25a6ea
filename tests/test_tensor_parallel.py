"""Tensor parallelism: the conjugate communication ops and the sharded layers equal serial."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.parallel.mappings import shard_range

TOL = {"float64": 1e-10, "float32": 1e-5}


def launch(fn, world_size, args=(), backend="shm"):
    from minilepton.cluster import launch as _launch
    return _launch(fn, world_size, args=args, backend=backend, timeout_s=60)


def close(a, b, dtype) -> bool:
    """rtol of the dtype, with an absolute floor at rtol × the array's scale (entries that
    cancel to near zero carry the rounding of the larger terms they came from)."""
    rtol = TOL[dtype]
    return np.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(np.abs(b).max())))


# ---------------------------------------------------------------- pure parts
@settings(max_examples=50, deadline=None)
@given(st.integers(1, 50), st.integers(1, 8))
def test_shard_range_tiles_the_axis_near_evenly(n, parts):
    if parts > n:
        with pytest.raises(ValueError, match="more shards than features"):
            shard_range(n, parts, 0)
        return
    pieces = [shard_range(n, parts, r) for r in range(parts)]
    assert pieces[0].start == 0 and pieces[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))
    widths = [p.stop - p.start for p in pieces]
    assert max(widths) - min(widths) <= 1 and widths == sorted(widths, reverse=True)


# ---------------------------------------------------------------- rank number as data
def _ops_worker(comm):
    from minilepton.parallel import mappings as mp
    P, r = comm.world_size, comm.rank
    out = {}
    x = ml.Tensor(np.full((2, 3), float(r)), requires_grad=True)
    y = mp.reduce_from_group(x, comm)
    out["reduce_fwd"] = y.numpy()
    y.backward(np.full((2, 3), float(r + 1)))
    out["reduce_bwd"] = x.grad
    x = ml.Tensor(np.full((2, 3), float(r)), requires_grad=True)
    y = mp.copy_to_group(x, comm)
    out["copy_fwd"] = y.numpy()
    y.backward(np.full((2, 3), float(r + 1)))
    out["copy_bwd"] = x.grad
    n = 2 * P + 1  # uneven on purpose
    x = ml.Tensor(np.tile(np.arange(n, dtype=np.float64), (2, 1)), requires_grad=True)
    y = mp.scatter_to_group(x, comm)
    out["scatter_fwd"] = y.numpy()
    y.backward(np.full(y.shape, float(r + 1)))
    out["scatter_bwd"] = x.grad
    cols = shard_range(n, P, r)
    x = ml.Tensor(np.full((2, cols.stop - cols.start), float(r)), requires_grad=True)
    y = mp.gather_from_group(x, comm, n)
    out["gather_fwd"] = y.numpy()
    y.backward(np.tile(np.arange(n, dtype=np.float64), (2, 1)))
    out["gather_bwd"] = x.grad
    return out


@pytest.mark.timeout(60)
def test_communication_ops_closed_form():
    P = 3
    results = launch(_ops_worker, P)
    total = P * (P - 1) / 2
    n = 2 * P + 1
    owner = np.concatenate([[r] * (shard_range(n, P, r).stop - shard_range(n, P, r).start)
                            for r in range(P)])
    for r, out in enumerate(results):
        cols = shard_range(n, P, r)
        assert np.all(out["reduce_fwd"] == total)            # Σ_r r
        assert np.all(out["reduce_bwd"] == r + 1)            # identity
        assert np.all(out["copy_fwd"] == r)                  # identity
        assert np.all(out["copy_bwd"] == total + P)          # Σ_r (r + 1)
        assert np.array_equal(out["scatter_fwd"][0], np.arange(n)[cols])
        assert np.array_equal(out["scatter_bwd"][0], owner + 1.0)  # every rank's g, gathered
        assert np.array_equal(out["gather_fwd"][0], owner.astype(float))
        assert np.array_equal(out["gather_bwd"][0], np.arange(n)[cols])


# ---------------------------------------------------------------- equivalence with serial
def _tp_worker(comm, cases):
    """For each case: serial and tensor-parallel forward/backward/SGD step on the same numbers;
    returns (loss, full grads, full updated params) of both, gathered on every rank."""
    from minilepton.autograd.losses import cross_entropy
    from minilepton.optim import SGD
    from minilepton.parallel.tensor_parallel import full_state_dict, parallelize_mlp
    results = []
    for sizes, dtype, seed, batch in cases:
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(batch, sizes[0])).astype(dtype)
        y = rng.integers(0, sizes[-1], batch)
        serial = ml.nn.mlp(sizes, seed=seed, dtype=dtype)
        par = parallelize_mlp(ml.nn.mlp(sizes, seed=seed, dtype=dtype), comm)
        losses = []
        for model in (serial, par):
            loss = cross_entropy(model(ml.Tensor(x)), y, reduction="sum") * (1.0 / batch)
            loss.backward()
            losses.append(loss.item())
        serial_grads = {n: p.grad.copy() for n, p in serial.named_parameters()}
        params = par.parameters()
        values = [p.data for p in params]
        for p in params:
            p.data = p.grad
        par_grads = full_state_dict(par)
        for p, v in zip(params, values):
            p.data = v
        for model in (serial, par):
            SGD(model.parameters(), lr=0.5).step()
        results.append((losses, serial_grads, par_grads,
                        {n: p.numpy() for n, p in serial.named_parameters()}, full_state_dict(par)))
    return results


mlp_sizes = st.lists(st.integers(2, 9), min_size=2, max_size=5)


@pytest.mark.timeout(120)
@settings(max_examples=4, deadline=None)
@given(st.integers(2, 3), st.lists(st.tuples(mlp_sizes, st.sampled_from(["float64", "float32"]),
                                             st.integers(0, 99), st.integers(1, 6)),
                                   min_size=1, max_size=3))
def test_tensor_parallel_equals_serial(world_size, cases):
    cases = [(s, d, seed, b) for s, d, seed, b in cases
             if all(w >= world_size for w in s[1:])]  # every sharded width fits
    if not cases:
        return
    for rank_results in launch(_tp_worker, world_size, (cases,)):
        for (sizes, dtype, _, _), (losses, sg, pg, sp, pp) in zip(cases, rank_results):
            assert losses[0] == pytest.approx(losses[1], rel=TOL[dtype])
            for name in sg:
                assert close(pg[name], sg[name], dtype), (sizes, dtype, name)
                assert close(pp[name], sp[name], dtype), (sizes, dtype, name)


def _count_worker(comm):
    """All-reduces of one column→row block, forward and backward, for an input needing grad."""
    from minilepton.parallel.tensor_parallel import parallelize_mlp
    block = parallelize_mlp(ml.nn.mlp([6, 8, 5], seed=0, dtype="float64"), comm)
    x = ml.Tensor(np.ones((4, 6)), requires_grad=True)
    y = block(x)
    forward = comm.stats.calls.get("allreduce", 0)
    y.sum().backward()
    return forward, comm.stats.calls.get("allreduce", 0) - forward, comm.stats.calls


@pytest.mark.timeout(60)
def test_mlp_block_costs_one_allreduce_each_way():
    for forward, backward, calls in launch(_count_worker, 2):
        assert (forward, backward) == (1, 1), calls
        assert set(calls) == {"allreduce"}


def _uneven_worker(comm):
    from minilepton.parallel.tensor_parallel import ColumnParallelLinear
    return ColumnParallelLinear(ml.nn.Linear(4, 2, rng=0), comm)


@pytest.mark.timeout(60)
def test_more_shards_than_features_is_a_clear_error():
    from minilepton.cluster import WorkerError
    with pytest.raises(WorkerError, match="cannot shard 2 features over 3 ranks"):
        launch(_uneven_worker, 3)
