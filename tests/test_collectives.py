"""Collectives equal a NumPy reference in the same fixed order, bit for bit, on every rank.

Each hypothesis example is one job (world size 1-4) running a random list of cases; every rank
rebuilds any rank's input from (seed, rank), so the test computes the reference here and
compares every rank's result byte for byte. The same suite runs on every backend (conftest).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UFUNCS = {"sum": np.add, "mean": np.add, "max": np.maximum}
EXAMPLES = {"shm": 5, "mpi": 2}


def data(seed, rank, shape, dtype):
    """Values over six decades, so that a different summation order changes the bits."""
    rng = np.random.default_rng([seed, rank])
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, shape)
    return x.astype(dtype)


def fold(rows, uf):
    out = rows[0].copy()
    for row in rows[1:]:
        uf(out, row, out=out)
    return out


def ref_allreduce(xs, op, algorithm):
    P, uf = len(xs), UFUNCS[op]
    if algorithm == "ring":  # chunk c is summed in the ring's order c, c+1, ..., c-1
        flat = [x.reshape(-1) for x in xs]
        out = np.empty_like(flat[0])
        n = out.size
        for c in range(P):
            a, b = c * n // P, (c + 1) * n // P
            out[a:b] = fold([flat[(c + k) % P][a:b] for k in range(P)], uf)
        out = out.reshape(xs[0].shape)
    else:
        out = fold(xs, uf)
    return np.divide(out, P, out=out) if op == "mean" else out


# ---- the job: every rank runs the same list of cases, in order
def _input(comm, case, rank):
    x = data(case["seed"], rank, case["shape"], case["dtype"])
    where = case.get("where", "private")
    if where == "private":
        return x
    if where == "arena":
        y = comm.zeros(x.shape, x.dtype)
    else:  # a view in the middle of a larger arena buffer (a gradient bucket)
        bucket = comm.zeros((x.size + 7,), x.dtype)
        y = bucket[5:5 + x.size].reshape(x.shape)
    y[...] = x
    return y


def _run_case(comm, case):
    r, kind = comm.rank, case["kind"]
    if kind == "allreduce":
        x = _input(comm, case, r)
        before = comm.stats.bytes_sent, comm.stats.messages_sent
        out = comm.allreduce(x, op=case["op"], algorithm=case["algorithm"])
        assert out is x
        moved = comm.stats.bytes_sent - before[0], comm.stats.messages_sent - before[1]
        return np.array(x), moved
    if kind == "reduce_scatter":
        return comm.reduce_scatter(_input(comm, case, r), op=case["op"])
    if kind == "allgather":
        return comm.allgather(_input(comm, case, r))
    if kind == "broadcast":
        return np.array(comm.broadcast(_input(comm, case, r), root=case["root"] % comm.world_size))
    if kind == "sendrecv":  # every rank posts k messages to its right before receiving any
        P = comm.world_size
        if P == 1:
            return []
        for k in range(case["k"]):
            comm.send(data(case["seed"] + k, r, case["shape"], case["dtype"]), (r + 1) % P)
        got = []
        for _ in range(case["k"]):
            buf = np.zeros(case["shape"], case["dtype"])
            comm.recv(buf, (r - 1) % P)
            got.append(buf)
        return got
    if kind == "split":
        colors, keys = case["colors"], case["keys"]
        sub = comm.split(colors[r], keys[r])
        if sub is None:
            return None
        x = _input(comm, case, r)
        sub.allreduce(x, op=case["op"])
        other = sub.split(0, -sub.rank)  # a split of a split: reversed order
        y = data(case["seed"] + 1, r, (3,), np.float64)
        other.allreduce(y)
        return sub.rank, sub.world_size, x, other.rank, y
    raise AssertionError(kind)


def collectives_job(comm, cases):
    return [_run_case(comm, case) for case in cases]


# ---- the references
def _check(case, P, results):
    kind, seed, shape, dt = case["kind"], case["seed"], case["shape"], case["dtype"]
    xs = [data(seed, q, shape, dt) for q in range(P)]
    if kind == "allreduce":
        want = ref_allreduce(xs, case["op"], case["algorithm"])
        n = xs[0].nbytes
        for got, moved in results:
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), case
            if case["algorithm"] == "ring":
                assert moved[1] == 2 * (P - 1), case
            if case["algorithm"] == "ring" and shape[0] % P == 0:
                assert moved[0] == 2 * (P - 1) * n // P, case  # the ring's exact traffic
    elif kind == "reduce_scatter":
        full = fold(xs, UFUNCS[case["op"]])
        if case["op"] == "mean":
            full = np.divide(full, P, out=full)
        for r, got in enumerate(results):
            assert got.tobytes() == np.split(full, P)[r].tobytes(), case
    elif kind == "allgather":
        want = np.concatenate(xs) if xs[0].ndim else np.stack(xs)
        for got in results:
            assert got.shape == want.shape and got.tobytes() == want.tobytes(), case
    elif kind == "broadcast":
        want = xs[case["root"] % P]
        for got in results:
            assert got.tobytes() == want.tobytes(), case
    elif kind == "sendrecv":
        for r, got in enumerate(results):
            left = (r - 1) % P
            want = [data(seed + k, left, shape, dt) for k in range(case["k"])] if P > 1 else []
            assert [g.tobytes() for g in got] == [w.tobytes() for w in want], case
    elif kind == "split":
        colors, keys = case["colors"][:P], case["keys"][:P]
        for r, got in enumerate(results):
            if colors[r] is None:
                assert got is None
                continue
            members = sorted((keys[q], q) for q in range(P) if colors[q] == colors[r])
            order = [q for _, q in members]
            sub_rank, sub_size, x, other_rank, y = got
            assert (sub_rank, sub_size) == (order.index(r), len(order))
            assert x.tobytes() == ref_allreduce([xs[q] for q in order], case["op"],
                                                None).tobytes(), case
            rev = order[::-1]  # the inner split orders by -sub.rank
            assert other_rank == rev.index(r)
            ys = [data(seed + 1, q, (3,), np.float64) for q in rev]
            assert y.tobytes() == fold(ys, np.add).tobytes()


# ---- the strategies
dtypes = st.sampled_from([np.float32, np.float64])
shapes = st.one_of(st.tuples(st.integers(0, 700)),
                   st.tuples(st.integers(1, 40), st.integers(1, 30)),
                   st.tuples(st.sampled_from([4096, 12000])))
ops = st.sampled_from(["sum", "mean", "max"])


def case_strategy(backend):
    seeds = st.integers(0, 2**31)
    wheres = st.sampled_from(["private", "arena", "arena_view"])
    algorithms = st.sampled_from([None, "ring"] + (["rsag"] if backend == "shm" else []))
    divisible = st.integers(1, 30).map(lambda k: (12 * k, 3))  # axis 0 divisible by 1..4
    return st.one_of(
        st.fixed_dictionaries({"kind": st.just("allreduce"), "seed": seeds, "shape": shapes,
                               "dtype": dtypes, "op": ops, "algorithm": algorithms,
                               "where": wheres}),
        st.fixed_dictionaries({"kind": st.just("reduce_scatter"), "seed": seeds,
                               "shape": divisible, "dtype": dtypes, "op": ops,
                               "where": wheres}),
        st.fixed_dictionaries({"kind": st.just("allgather"), "seed": seeds, "shape": shapes,
                               "dtype": dtypes, "where": wheres}),
        st.fixed_dictionaries({"kind": st.just("broadcast"), "seed": seeds, "shape": shapes,
                               "dtype": dtypes, "root": st.integers(0, 3), "where": wheres}),
        st.fixed_dictionaries({"kind": st.just("sendrecv"), "seed": seeds,
                               "shape": st.tuples(st.integers(0, 600)), "dtype": dtypes,
                               "k": st.integers(1, 3)}),
        st.fixed_dictionaries({"kind": st.just("split"), "seed": seeds, "shape": shapes,
                               "dtype": dtypes, "op": ops,
                               "colors": st.lists(st.sampled_from([0, 1, None]), min_size=4,
                                                  max_size=4),
                               "keys": st.lists(st.integers(-3, 3), min_size=4, max_size=4)}),
    )


@pytest.mark.timeout(120)
def test_collectives_equal_the_ordered_numpy_reference(backend):
    @settings(max_examples=EXAMPLES[backend], deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(P=st.integers(1, 4), cases=st.lists(case_strategy(backend), min_size=6, max_size=14))
    def check(P, cases):
        for case in cases:
            if case["kind"] == "split" and all(c is None for c in case["colors"][:P]):
                case["colors"][0] = 0
        results = run_job(backend, collectives_job, P, (cases,))
        for i, case in enumerate(cases):
            _check(case, P, [results[r][i] for r in range(P)])

    check()


def _bits_job(comm, n):
    x = data(7, comm.rank, (n,), np.float32)
    comm.allreduce(x)
    return x.tobytes()


@pytest.mark.timeout(60)
def test_every_rank_gets_the_same_bits_run_after_run(backend):
    first = run_job(backend, _bits_job, 3, (20001,))
    again = run_job(backend, _bits_job, 3, (20001,))
    assert len(set(first)) == 1 and first == again


def _api_job(comm):
    errors = []
    for call in (lambda: comm.allreduce(np.zeros(3), op="median"),
                 lambda: comm.allreduce(np.zeros((4, 4))[:, 1]),
                 lambda: comm.allreduce([1.0, 2.0]),
                 lambda: comm.send(np.zeros(2), comm.world_size + 3),
                 lambda: comm.reduce_scatter(np.zeros(5))):
        try:
            call()
            errors.append(None)
        except (ValueError, TypeError) as exc:
            errors.append(str(exc))
    events = []
    comm.hooks.append(lambda event, op, rank, t_s, nbytes: events.append((event, op, nbytes)))
    comm.allreduce(np.ones(8, np.float32))
    comm.barrier()
    comm.stats.reset()
    comm.allreduce(np.ones(8, np.float32))
    return errors, events, comm.stats.as_dict()


@pytest.mark.timeout(60)
def test_bad_calls_give_one_clear_error_and_hooks_see_every_operation(backend):
    for errors, events, stats in run_job(backend, _api_job, 2):
        assert "unknown reduction op 'median'" in errors[0]
        assert "C-contiguous" in errors[1]
        assert "NumPy array" in errors[2]
        assert "outside" in errors[3]
        assert "divisible" in errors[4]
        assert [(e, op) for e, op, _ in events] == [
            ("start", "allreduce"), ("end", "allreduce"), ("start", "barrier"),
            ("end", "barrier"), ("start", "allreduce"), ("end", "allreduce")]
        assert events[0][2] == 32  # 2(P-1)/P * 32 bytes
        assert stats["calls"] == {"allreduce": 1} and stats["bytes_sent"] == 32
