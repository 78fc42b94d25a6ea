"""Data parallelism computes the single-process step: gradients, updates, sampler, compression.

Pure parts (sampler, bucket layout, compression, balancing) are checked in this process; the
equivalence tests launch workers once per hypothesis example and run several cases per launch.
"""

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minilepton as ml
from minilepton.cluster import simulate
from minilepton.comm.base import Communicator
from minilepton.data import DataLoader
from minilepton.parallel.balance import DynamicBalancer, make_balancer, static_weights, step_time_s
from minilepton.parallel.compression import TopKCompression, make_compressor
from minilepton.parallel.data_parallel import DataParallel, bucket_layout
from minilepton.parallel.local_sgd import LocalSGD
from minilepton.parallel.mesh import Mesh
from minilepton.parallel.sampler import DistributedSampler, shard_sizes
from minilepton.parallel.stats import StepStats
from minilepton.parallel.strategy import ParallelStrategy, SingleProcess


def dp_strategy(comm, model, optimizer, local_sgd=False, node_speeds=None, balance="none",
                **options):
    """Data parallelism over all of ``comm``'s ranks, as the engine's recipe composes it."""
    if node_speeds is not None:  # what the launcher does for --node-speeds
        simulate.set_node_speeds(node_speeds, comm.rank)
    balancer = make_balancer(balance, comm.world_size, node_speeds)
    strat = ParallelStrategy(Mesh(comm, dp=comm.world_size), model, lambda params: optimizer,
                             balancer=balancer, slow_down=simulate.slow_down if node_speeds
                             else None, **options)
    if local_sgd and strat.dp is not None:  # local SGD even for k = 1 (equals plain DP)
        strat.local_sgd = LocalSGD(strat.dp, options.get("sync_every", 1))
    return strat


# ----------------------------------------------------------------------------- pure parts
@settings(max_examples=80, deadline=None)
@given(st.integers(0, 300), st.lists(st.floats(0.05, 10), min_size=1, max_size=6))
def test_shards_cover_the_batch_in_proportion(batch, weights):
    sizes = shard_sizes(batch, weights)
    assert sizes.sum() == batch and (sizes >= 0).all()
    exact = batch * np.asarray(weights) / np.sum(weights)
    assert np.all(np.abs(sizes - exact) < 1.0)
    idx = np.arange(1000, 1000 + batch)
    blocks = [DistributedSampler(r, len(weights), weights).local_indices(idx)
              for r in range(len(weights))]
    assert np.array_equal(np.concatenate(blocks), idx)  # disjoint, contiguous, in order


def test_sampler_epochs_match_one_process():
    loader = DataLoader(np.zeros((103, 1)), np.zeros(103), batch_size=10, seed=7)
    for epoch in (0, 3):
        mine = [b for b, _ in DistributedSampler(0, 3).epoch_batches(103, 10, 7, epoch)]
        ref = loader.epoch_indices(epoch)
        assert len(mine) == len(ref) and all(np.array_equal(a, b) for a, b in zip(mine, ref))


def test_bad_sampler_input_is_one_clear_error():
    with pytest.raises(ValueError, match="outside"):
        DistributedSampler(4, 4)
    with pytest.raises(ValueError, match="non-negative"):
        shard_sizes(10, [1, -1])
    with pytest.raises(ValueError, match="2 weights"):
        DistributedSampler(0, 2, [1, 2, 3])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=12), st.integers(1, 800))
def test_bucket_layout_is_reverse_order_and_bounded(nbytes, limit):
    buckets = bucket_layout(nbytes, ["f4"] * len(nbytes), limit)
    assert [i for b in buckets for i in b] == list(reversed(range(len(nbytes))))
    for b in buckets:
        assert len(b) == 1 or sum(nbytes[i] for i in b) <= limit


def test_bucket_layout_splits_on_dtype():
    assert bucket_layout([4, 4, 4], ["f4", "f8", "f8"], 1 << 20) == [[2, 1], [0]]


class Solo(Communicator):
    """A one-rank communicator: every collective is the identity."""

    backend_name = "solo"

    def __init__(self):
        super().__init__(0, 1)

    def allreduce(self, x, op="sum", algorithm=None):
        with self._timed("allreduce", 0, 0):
            return x

    def allgather(self, x):
        return x.copy()

    def broadcast(self, x, root=0):
        return x


def test_topk_error_feedback_delays_but_never_loses_gradient():
    rng = np.random.default_rng(0)
    topk, sent, total = TopKCompression(0.1), np.zeros(50), np.zeros(50)
    for _ in range(20):
        g = rng.normal(size=50)
        total += g
        bucket = g.copy()
        topk.allreduce_sum(Solo(), bucket, key=0)
        assert np.count_nonzero(bucket) <= 5
        sent += bucket
    np.testing.assert_allclose(sent + topk._residual[0], total, rtol=1e-12, atol=1e-12)


def test_fp16_rounds_to_half_precision_and_bad_specs_fail():
    bucket = np.array([1.0, 1e-3, 3.14159], dtype=np.float32)
    make_compressor("fp16").allreduce_sum(Solo(), bucket, key=0)
    assert np.array_equal(bucket, bucket.astype(np.float16).astype(np.float32))
    assert bucket[2] != np.float32(3.14159)
    for spec in ("zip", "topk:0", "topk:x"):
        with pytest.raises(ValueError):
            make_compressor(spec)


def test_balancing_maths():
    speeds = [1.0, 1.0, 0.5]
    equal, balanced = np.full(3, 40), shard_sizes(120, static_weights(speeds))
    assert balanced.tolist() == [48, 48, 24]
    assert step_time_s(equal, speeds, 0.01) == pytest.approx(0.8)
    assert step_time_s(balanced, speeds, 0.01) == pytest.approx(0.48)
    balancer = DynamicBalancer(1, smoothing=0.5)
    assert balancer.update(Solo(), 10, 0.1) == pytest.approx([1.0])


# ----------------------------------------------------------------------------- equivalence
@dataclass
class Case:
    sizes: list
    n_samples: int
    batch_size: int
    optimizer: str
    dtype: str
    bucket_bytes: int
    accumulate: int       # micro-steps per update (no_sync on all but the last)
    weights: list | None  # static shares; None = equal
    seed: int


def make_data(case):
    rng = np.random.default_rng(case.seed)
    x = rng.normal(size=(case.n_samples, case.sizes[0])).astype(case.dtype)
    y = rng.integers(0, case.sizes[-1], case.n_samples)
    return x, y


def make_model(case):
    model = ml.nn.mlp(case.sizes, seed=case.seed, dtype=case.dtype)
    if case.optimizer == "sgd":
        opt = ml.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    else:
        # Near |g| ≈ eps Adam's step g / (|g| + eps) turns a summation-order difference δg in
        # the gradient into lr·δg/eps in the parameters: with eps 1e-8 a 1e-17 rounding becomes
        # 1e-11, more than rtol 1e-10 of a small parameter. eps 1e-4 keeps the test about
        # parallelism rather than about Adam's conditioning.
        opt = ml.optim.Adam(model.parameters(), lr=0.01, eps=1e-4)
    return model, opt


def reference(case):
    """One process, the same update batches (batch_size × accumulate), and the same micro-batch
    accumulation when there is one: (first-step grads, final params). Accumulating changes the
    float rounding of a step by itself, so the serial reference accumulates too."""
    model, opt = make_model(case)
    x, y = make_data(case)
    grads = None
    for b in DataLoader(x, y, case.batch_size * case.accumulate, seed=case.seed).epoch_indices(0):
        opt.zero_grad()
        for mb in np.array_split(b, case.accumulate):
            loss = ml.autograd.cross_entropy(model(ml.Tensor(x[mb])), y[mb], reduction="sum")
            (loss * (1.0 / len(b))).backward()
        opt.step()
        grads = grads or [p.grad.copy() for p in model.parameters()]
    return grads, {n: p.numpy().copy() for n, p in model.named_parameters()}


def dp_worker(comm, cases):
    out = []
    for case in cases:
        model, opt = make_model(case)
        if comm.rank == 1:  # a different start: the broadcast must fix it
            for p in model.parameters():
                p.data += 1.0
        x, y = make_data(case)
        batches = DataLoader(x, y, case.batch_size * case.accumulate, seed=case.seed)
        if case.accumulate == 1:
            strat = dp_strategy(comm, model, opt, bucket_bytes=case.bucket_bytes)
            if case.weights:
                strat.sampler.set_weights(case.weights[:comm.world_size])
            grads = None
            for b in batches.epoch_indices(0):
                local = strat.local_indices(b)
                strat.train_step(x[local], y[local], len(b))
                grads = grads or [p.grad.copy() for p in model.parameters()]
            out.append((grads, strat.full_parameters()))
            continue
        dp = DataParallel(model, comm, case.bucket_bytes, reduce="sum")
        sampler, grads = DistributedSampler(comm.rank, comm.world_size), None
        for b in batches.epoch_indices(0):
            dp.zero_grad()
            micro = np.array_split(b, case.accumulate)
            for k, mb in enumerate(micro):
                local = sampler.local_indices(mb)
                loss = ml.autograd.cross_entropy(model(ml.Tensor(x[local])), y[local],
                                                 reduction="sum") * (1.0 / len(b))
                if k < len(micro) - 1:
                    with dp.no_sync():
                        dp.backward(loss)  # accumulates only: no all-reduce here
                else:
                    dp.backward(loss)
            opt.step()
            grads = grads or [p.grad.copy() for p in model.parameters()]
        out.append((grads, {n: p.numpy().copy() for n, p in model.named_parameters()}))
    return out


case_strategy = st.builds(
    Case,
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    n_samples=st.integers(1, 40),
    batch_size=st.integers(1, 16),
    optimizer=st.sampled_from(["sgd", "adam"]),
    dtype=st.sampled_from(["float64", "float64", "float32"]),
    bucket_bytes=st.sampled_from([8, 64, 1 << 20]),
    accumulate=st.sampled_from([1, 1, 2, 3]),
    weights=st.one_of(st.none(), st.lists(st.floats(0.1, 3), min_size=4, max_size=4)),
    seed=st.integers(0, 1000),
)


def check_equal(case, got, ref):
    """rtol 1e-10 (float64) or 1e-5 (float32), with an absolute floor of rtol × the array's
    largest entry, and in float32 at least rtol itself: a gradient summed from O(1/B) terms
    that cancel to 1e-5 carries float32 rounding of order 1e-8 × (its terms), not × itself."""
    rtol = 1e-10 if case.dtype == "float64" else 1e-5
    floor = 0.0 if case.dtype == "float64" else 1.0
    (g_dp, p_dp), (g_ref, p_ref) = got, ref
    for a, b in [*zip(g_dp, g_ref), *((p_dp[n], p_ref[n]) for n in p_ref)]:
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(np.abs(b).max(), floor))


def launch(fn, world_size, args, backend="shm"):
    from minilepton.cluster import launch as cluster_launch
    return cluster_launch(fn, world_size, args=args, backend=backend, timeout_s=60)


@pytest.mark.timeout(120)
@settings(max_examples=8, deadline=None)
@given(st.integers(1, 4), st.lists(case_strategy, min_size=4, max_size=4))
def test_data_parallel_equals_one_process(world_size, cases):
    results = launch(dp_worker, world_size, (cases,))
    for i, case in enumerate(cases):
        check_equal(case, results[0][i], reference(case))
        for r in range(1, world_size):  # every rank holds the same bits
            for name, value in results[0][i][1].items():
                assert np.array_equal(results[r][i][1][name], value)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_data_parallel_equals_one_process_over_mpi():
    pytest.importorskip("mpi4py")
    cases = [Case([5, 4, 3], 23, 8, "adam", "float64", 64, 1, [1, 2, 1, 1], 3),
             Case([3, 6, 2], 17, 5, "sgd", "float64", 1 << 20, 2, None, 4),
             Case([4, 3], 9, 4, "sgd", "float32", 8, 1, None, 5)]
    results = launch(dp_worker, 3, (cases,), backend="mpi")
    for i, case in enumerate(cases):
        check_equal(case, results[0][i], reference(case))


def variants_worker(comm, x, y):
    """Plain DP, local SGD k=1, dynamic balancing on unequal simulated speeds, and all-reduces
    overlapped with backward, on the same data."""
    out = {}
    configs = {"plain": {}, "local_sgd_1": {"sync_every": 1, "local_sgd": True},
               "overlap": {"overlap": True},
               "dynamic": {"node_speeds": [1.0, 0.5, 1.0][:comm.world_size], "balance": "dynamic"}}
    for name, kw in configs.items():
        ml.backend.set_default_dtype("float64")
        model = ml.nn.mlp([x.shape[1], 8, 3], seed=1, dtype="float64")
        strat = dp_strategy(comm, model, ml.optim.SGD(model.parameters(), lr=0.2), **kw)
        shares = []
        for b in DataLoader(x, y, 12, seed=2).epoch_indices(0):
            local = strat.local_indices(b)
            shares.append(len(local))
            strat.train_step(x[local], y[local], len(b))
        out[name] = (strat.full_parameters(), shares)
    return out


@pytest.mark.timeout(60)
def test_local_sgd_k1_balancing_and_overlap_keep_the_global_mean_update():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(62, 5)), rng.integers(0, 3, 62)  # last batch: 2 samples, 3 ranks
    first, again = (launch(variants_worker, 3, (x, y)) for _ in range(2))
    ref_model = ml.nn.mlp([5, 8, 3], seed=1, dtype="float64")
    single = SingleProcess(ref_model, ml.optim.SGD(ref_model.parameters(), lr=0.2))
    for b in DataLoader(x, y, 12, seed=2).epoch_indices(0):
        single.train_step(x[b], y[b], len(b))
    ref = single.full_parameters()
    for name in ("plain", "local_sgd_1", "dynamic", "overlap"):
        for key, value in ref.items():
            np.testing.assert_allclose(first[0][name][0][key], value, rtol=1e-10, atol=1e-12)
    for key in ref:  # same seed and world size: the same bits, run after run and on every rank
        assert np.array_equal(first[0]["plain"][0][key], again[0]["plain"][0][key])
        assert np.array_equal(first[2]["plain"][0][key], first[0]["plain"][0][key])
        assert np.array_equal(first[1]["overlap"][0][key], first[0]["plain"][0][key])
    assert first[0]["plain"][1] == [4] * 5 + [1]  # 12 samples over 3 ranks, then 2
    assert first[2]["plain"][1][-1] == 0          # rank 2 sits out the last step, yet joins in


def train_worker(comm, x, y, xt, yt, variant):
    ml.backend.set_default_dtype("float32")
    model = ml.nn.mlp([784, 32, 10], seed=0)
    strat = dp_strategy(comm, model, ml.optim.Adam(model.parameters(), lr=2e-3), **variant)
    losses = []
    for epoch in range(2):
        for b in DataLoader(x, y, 64, seed=0).epoch_indices(epoch):
            local = strat.local_indices(b)
            losses.append(strat.reduce_stats(strat.train_step(x[local], y[local], len(b))))
    acc = strat.evaluate(xt, yt)
    zero = StepStats(0.0, 0, 0)
    first, last = sum(losses[:10], zero), sum(losses[-10:], zero)
    return (first.loss_sum / first.count, last.loss_sum / last.count, acc.correct / acc.count,
            strat.comm_report())


@pytest.mark.timeout(120)
def test_compression_and_local_sgd_still_converge_on_the_embedded_data():
    (x, y), (xt, yt) = ml.data.load_dataset("default")
    x, xt = ml.data.to_float(x[:3000]), ml.data.to_float(xt)
    y = y[:3000].astype(np.int64)
    variants = [{}, {"compress": "fp16"}, {"compress": "topk:0.05"}, {"sync_every": 4}]
    rows = [launch(train_worker, 2, (x, y, xt, yt.astype(np.int64), v))[0] for v in variants]
    plain_bytes = rows[0][3]["bytes_per_step"]
    for (first, last, acc, report), variant, least in zip(rows, variants, [0.72, 0.72, 0.6, 0.7]):
        assert last < 0.7 * first, variant   # the loss falls ...
        assert acc > least, variant          # ... and test accuracy is far above chance (0.1)
    assert rows[1][3]["bytes_per_step"] == pytest.approx(plain_bytes / 2, rel=0.01)
    assert rows[2][3]["bytes_per_step"] < 0.2 * plain_bytes
    assert rows[3][3]["bytes_per_step"] < 0.3 * plain_bytes
