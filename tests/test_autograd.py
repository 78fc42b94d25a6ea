"""Autograd: every op's backward against central finite differences (float64, hypothesis),
random compositions, accumulation semantics, no_grad, float32 dtype preservation, gradcheck's
own failure messages, and the article's worked logistic-regression example."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minilepton as ml
from minilepton import Tensor, gradcheck, no_grad
from minilepton.autograd import (
    GradcheckError,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    is_grad_enabled,
    log_softmax,
    mse,
)

CHECK = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**32 - 1)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonempty_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)


def leaf(rng, shape, low=None, high=None, requires_grad=True):
    """A float64 leaf: standard normal, or uniform in [low, high)."""
    data = rng.standard_normal(shape) if low is None else rng.uniform(low, high, shape)
    return Tensor(np.asarray(data, dtype=np.float64), requires_grad=requires_grad)


def away_from_zero(rng, shape):
    """Values with |x| in [0.1, 2): kinks (relu) and poles (1/x) stay far from eps."""
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    return Tensor(np.asarray(sign * rng.uniform(0.1, 2.0, shape)), requires_grad=True)


def distinct(rng, shape):
    """Distinct values 0.01 apart at least, so max has a unique arg-max at every eps step."""
    n = int(np.prod(shape, dtype=int))
    return Tensor((rng.choice(10 * n + 10, n, replace=False) / 100.0).reshape(shape),
                  requires_grad=True)


# ------------------------------------------------------------------ elementwise binary ops
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@CHECK
@given(op=st.sampled_from(sorted(BINARY)), seed=seeds,
       shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=4))
def test_binary_ops_with_broadcasting(op, seed, shapes):
    rng = np.random.default_rng(seed)
    sa, sb = shapes.input_shapes
    a = leaf(rng, sa)
    b = leaf(rng, sb, 0.5, 2.0) if op == "div" else leaf(rng, sb)
    gradcheck(BINARY[op], [a, b])


@CHECK
@given(seed=seeds, shape=shapes, scalar=st.floats(0.5, 3.0),
       kind=st.sampled_from([float, np.float64, np.float32, lambda v: np.array(v)]))
def test_binary_ops_with_scalars_both_sides(seed, shape, scalar, kind):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape, 0.5, 2.0)
    s = kind(scalar)
    for fn in (lambda x: x + s, lambda x: s + x, lambda x: x - s, lambda x: s - x,
               lambda x: x * s, lambda x: s * x, lambda x: x / s, lambda x: s / x):
        gradcheck(fn, [a])


@CHECK
@given(seed=seeds, shape=shapes)
def test_binary_op_where_one_side_is_constant(seed, shape):
    rng = np.random.default_rng(seed)
    a, c = leaf(rng, shape), leaf(rng, shape, 0.5, 2.0, requires_grad=False)
    gradcheck(lambda x, y: x * y + x / y, [a, c])
    assert c.grad is None


@CHECK
@given(seed=seeds, shape=shapes, p=st.sampled_from([0, 1, 2, 3, 0.5, -1.5, 2.5]))
def test_neg_and_pow(seed, shape, p):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape, 0.5, 2.0)
    gradcheck(lambda x: -x, [a])
    gradcheck(lambda x: x ** p, [a])


def test_pow_with_a_tensor_exponent_is_refused():
    x = Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(TypeError, match="number"):
        x ** x


# ------------------------------------------------------------------ matmul
@CHECK
@given(seed=seeds, n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4),
       batch=st.lists(st.integers(1, 3), max_size=2),
       case=st.sampled_from(["2d", "vec@mat", "mat@vec", "vec@vec", "batched", "batch@2d",
                             "2d@batch", "broadcast-batch", "vec@batch", "batch@vec"]))
def test_matmul(seed, n, k, m, batch, case):
    rng = np.random.default_rng(seed)
    bshape = tuple(batch) or (2,)
    shapes = {
        "2d": ((n, k), (k, m)),
        "vec@mat": ((k,), (k, m)),
        "mat@vec": ((n, k), (k,)),
        "vec@vec": ((k,), (k,)),
        "batched": (bshape + (n, k), bshape + (k, m)),
        "batch@2d": (bshape + (n, k), (k, m)),
        "2d@batch": ((n, k), bshape + (k, m)),
        "broadcast-batch": ((1,) + bshape + (n, k), bshape[:1] + (1,) * (len(bshape) - 1)
                            + (k, m)),
        "vec@batch": ((k,), bshape + (k, m)),
        "batch@vec": (bshape + (n, k), (k,)),
    }[case]
    a, b = leaf(rng, shapes[0]), leaf(rng, shapes[1])
    out = a @ b
    np.testing.assert_allclose(out.data, a.data @ b.data)
    gradcheck(lambda x, y: x @ y, [a, b])


def test_matmul_with_an_array_operand_and_reflected():
    rng = np.random.default_rng(0)
    a, w = leaf(rng, (3, 4)), rng.standard_normal((4, 2))
    gradcheck(lambda x: x @ w, [a])
    gradcheck(lambda x: w.T @ x.T, [a])


def test_matmul_skips_gradients_nobody_needs():
    """The backward of x @ W must not compute ∂x when x is a constant (a data batch)."""
    rng = np.random.default_rng(0)
    x, w = leaf(rng, (5, 3), requires_grad=False), leaf(rng, (3, 2))
    out = x @ w
    grads = out._backward(np.ones((5, 2)))
    assert grads[0] is None and grads[1].shape == (3, 2)


# ------------------------------------------------------------------ reductions
axes_strategy = st.one_of(st.none(), st.integers(-3, 2), st.lists(st.integers(0, 2), min_size=1,
                                                                  max_size=3, unique=True))


def _fit_axis(axis, ndim):
    if axis is None:
        return None
    if isinstance(axis, int):
        return axis % ndim
    kept = tuple(sorted({ax % ndim for ax in axis}))
    return kept


@CHECK
@given(seed=seeds, shape=nonempty_shapes, axis=axes_strategy, keepdims=st.booleans(),
       op=st.sampled_from(["sum", "mean", "max"]))
def test_reductions(seed, shape, axis, keepdims, op):
    rng = np.random.default_rng(seed)
    axis = _fit_axis(axis, len(shape))
    a = distinct(rng, shape) if op == "max" else leaf(rng, shape)
    out = getattr(a, op)(axis=axis, keepdims=keepdims)
    expected = getattr(np, op if op != "max" else "amax")(a.data, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(out.data, expected)
    gradcheck(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), [a])


def test_max_shares_the_gradient_among_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])


# ------------------------------------------------------------------ elementwise unary ops
@CHECK
@given(seed=seeds, shape=shapes, op=st.sampled_from(["exp", "log", "relu", "sigmoid", "tanh"]))
def test_unary_ops(seed, shape, op):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape, 0.2, 3.0) if op == "log" else away_from_zero(rng, shape)
    gradcheck(lambda x: getattr(x, op)(), [a])


def test_sigmoid_and_losses_are_finite_for_huge_inputs():
    z = Tensor(np.array([-1000.0, 0.0, 1000.0]), requires_grad=True)
    s = z.sigmoid()
    np.testing.assert_allclose(s.data, [0.0, 0.5, 1.0])
    loss = binary_cross_entropy_with_logits(z, np.array([1.0, 0.0, 1.0]))
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(z.grad))
    logits = Tensor(np.array([[1000.0, -1000.0, 0.0]]), requires_grad=True)
    ce = cross_entropy(logits, np.array([1]))
    ce.backward()
    assert np.isfinite(ce.item()) and np.all(np.isfinite(logits.grad))


# ------------------------------------------------------------------ shape ops
@CHECK
@given(seed=seeds, shape=nonempty_shapes)
def test_reshape_and_transpose(seed, shape):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape)
    perm = tuple(rng.permutation(len(shape)))
    gradcheck(lambda x: x.reshape(-1), [a])
    gradcheck(lambda x: x.reshape(tuple(reversed(shape))), [a])
    gradcheck(lambda x: x.reshape(*shape[::-1]), [a])
    gradcheck(lambda x: x.transpose(perm), [a])
    gradcheck(lambda x: x.transpose(*perm), [a])
    gradcheck(lambda x: x.T, [a])
    np.testing.assert_array_equal(a.T.data, a.data.T)


@CHECK
@given(seed=seeds, shape=nonempty_shapes, data=st.data())
def test_basic_indexing(seed, shape, data):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape)
    index = []
    for n in shape[: data.draw(st.integers(1, len(shape)))]:
        if data.draw(st.booleans()):
            index.append(data.draw(st.integers(-n, n - 1)))
        else:
            index.append(slice(data.draw(st.integers(0, n - 1)), n,
                               data.draw(st.integers(1, 2))))
    index = tuple(index)
    np.testing.assert_array_equal(a[index].data, a.data[index])
    gradcheck(lambda x: x[index], [a])


@CHECK
@given(seed=seeds, shape=nonempty_shapes, k=st.integers(1, 6))
def test_fancy_indexing_with_repeats_adds_up(seed, shape, k):
    rng = np.random.default_rng(seed)
    a = leaf(rng, shape)
    rows = rng.integers(0, shape[0], size=k)
    gradcheck(lambda x: x[rows], [a])
    if len(shape) >= 2:
        cols = rng.integers(0, shape[1], size=k)
        gradcheck(lambda x: x[rows, cols], [a])
        gradcheck(lambda x: x[:, cols], [a])
    mask = rng.random(shape) < 0.5
    gradcheck(lambda x: x[mask], [a])


def test_fancy_index_repeats_are_counted():
    x = Tensor(np.arange(4.0), requires_grad=True)
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0, 0.0])


@CHECK
@given(seed=seeds, shape=nonempty_shapes, sizes=st.lists(st.integers(1, 3), min_size=1,
                                                         max_size=3), data=st.data())
def test_concatenate_split_stack(seed, shape, sizes, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    ax = axis % len(shape)
    parts = [leaf(rng, shape[:ax] + (s,) + shape[ax + 1:]) for s in sizes]
    gradcheck(lambda *ts: ml.concatenate(ts, axis=axis), parts)
    whole = leaf(rng, shape[:ax] + (sum(sizes),) + shape[ax + 1:])
    gradcheck(lambda x: ml.concatenate(ml.split(x, sizes, axis=axis)[::-1], axis=axis), [whole])
    pieces = ml.split(whole, sizes, axis=axis)
    assert [p.shape[ax] for p in pieces] == sizes
    equal = leaf(rng, shape[:ax] + (2 * shape[ax],) + shape[ax + 1:])
    gradcheck(lambda x: ml.split(x, 2, axis=axis)[1] * 3.0, [equal])
    new_axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    same = [leaf(rng, shape) for _ in sizes]
    out = ml.stack(same, axis=new_axis)
    np.testing.assert_array_equal(out.data, np.stack([t.data for t in same], axis=new_axis))
    gradcheck(lambda *ts: ml.stack(ts, axis=new_axis), same)


def test_split_refuses_sizes_that_do_not_fit():
    x = Tensor(np.zeros((5, 2)), requires_grad=True)
    with pytest.raises(ValueError, match="equal parts"):
        ml.split(x, 2)
    with pytest.raises(ValueError, match="add up"):
        ml.split(x, [2, 2])


# ------------------------------------------------------------------ fused losses
@CHECK
@given(seed=seeds, n=st.integers(1, 5), c=st.integers(1, 5), reduction=st.sampled_from(
    ["mean", "sum"]), axis=st.sampled_from([0, 1, -1]))
def test_log_softmax_and_cross_entropy(seed, n, c, reduction, axis):
    rng = np.random.default_rng(seed)
    z = leaf(rng, (n, c))
    labels = rng.integers(0, c, size=n)
    gradcheck(lambda x: log_softmax(x, axis=axis), [z])
    gradcheck(lambda x: cross_entropy(x, labels, reduction=reduction), [z])
    lse = np.log(np.exp(z.data).sum(axis=1))
    expected = (lse - z.data[np.arange(n), labels]).sum() / (n if reduction == "mean" else 1)
    np.testing.assert_allclose(cross_entropy(z, labels, reduction=reduction).item(), expected,
                               atol=1e-12)
    np.testing.assert_allclose(log_softmax(z, axis=axis).data,
                               z.data - np.log(np.exp(z.data).sum(axis=axis, keepdims=True)),
                               atol=1e-12)


@CHECK
@given(seed=seeds, shape=nonempty_shapes, reduction=st.sampled_from(["mean", "sum"]))
def test_binary_cross_entropies_and_mse(seed, shape, reduction):
    rng = np.random.default_rng(seed)
    p = leaf(rng, shape, 0.05, 0.95)
    z = leaf(rng, shape)
    y = rng.uniform(0, 1, shape)
    gradcheck(lambda q: binary_cross_entropy(q, y, reduction=reduction), [p])
    gradcheck(lambda t: binary_cross_entropy_with_logits(t, y, reduction=reduction), [z])
    target = leaf(rng, shape)
    gradcheck(lambda a, b: mse(a, b, reduction=reduction), [z, target])
    scale = p.size if reduction == "mean" else 1
    np.testing.assert_allclose(
        binary_cross_entropy(p, y, reduction=reduction).item(),
        -(y * np.log(p.data) + (1 - y) * np.log(1 - p.data)).sum() / scale)
    sig = 1 / (1 + np.exp(-z.data))
    np.testing.assert_allclose(
        binary_cross_entropy_with_logits(z, y, reduction=reduction).item(),
        -(y * np.log(sig) + (1 - y) * np.log(1 - sig)).sum() / scale)


def test_loss_arguments_are_checked():
    z = Tensor(np.zeros((3, 4)), requires_grad=True)
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(z, np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        cross_entropy(z, np.array([0, 1, 4]))
    with pytest.raises(ValueError, match="integers"):
        cross_entropy(z, np.array([0.5, 1, 2]))
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(z, np.array([0, 1, 2]), reduction="none")


# ------------------------------------------------------------------ random compositions
UNARY_CHAIN = [
    lambda x: x.tanh(),
    lambda x: x.sigmoid(),
    lambda x: x * x,
    lambda x: (x.tanh() * 0.5).exp(),
    lambda x: x / (x * x + 1.0),
    lambda x: x - x.mean(axis=0, keepdims=True),
    lambda x: x.T.reshape(x.shape),
]
BINARY_CHAIN = [
    lambda x, y: x + y,
    lambda x, y: x - y,
    lambda x, y: x * y,
    lambda x, y: (x @ y.T) @ y * 0.25,
    lambda x, y: ml.concatenate([x, y], axis=1)[:, ::2].reshape(x.shape) if x.shape[1] % 2 == 0
    else x + 2.0 * y,
    lambda x, y: ml.stack([x, y]).sum(axis=0),
]


@settings(max_examples=40, deadline=None)
@given(seed=seeds, rows=st.integers(1, 3), cols=st.sampled_from([1, 2, 4]),
       program=st.lists(st.tuples(st.booleans(), st.integers(0, 100), st.integers(0, 100),
                                  st.integers(0, 100)), min_size=1, max_size=8))
def test_random_compositions(seed, rows, cols, program):
    """Random programs over three inputs, re-using intermediate values (fan-out), so gradients
    from several paths must be summed at inner nodes and at leaves."""
    rng = np.random.default_rng(seed)
    inputs = [leaf(rng, (rows, cols)) for _ in range(3)]

    def fn(*xs):
        values = list(xs)
        for binary, op, i, j in program:
            x, y = values[i % len(values)], values[j % len(values)]
            if binary:
                values.append(BINARY_CHAIN[op % len(BINARY_CHAIN)](x, y))
            else:
                values.append(UNARY_CHAIN[op % len(UNARY_CHAIN)](x))
        return values[-1] + values[-2] * 0.5
    gradcheck(fn, inputs)


# ------------------------------------------------------------------ accumulation semantics
def _twice(loss_fn, leaves):
    loss = loss_fn()
    loss.backward()
    once = [t.grad.copy() for t in leaves]
    loss.backward()  # the same graph again: the graph is kept
    for t, g in zip(leaves, once):
        np.testing.assert_array_equal(t.grad, g + g)
    return once


@pytest.mark.parametrize("name", ["add", "sum", "concat", "mlp", "fan-out", "index"])
def test_backward_twice_accumulates_exactly_twice(name):
    rng = np.random.default_rng(1)
    a, b = leaf(rng, (3, 4)), leaf(rng, (3, 4))
    w = leaf(rng, (4, 2))
    fns = {
        "add": lambda: (a + b).sum(),  # one gradient array reaches both leaves
        "sum": lambda: a.sum() + b.mean(),  # read-only broadcast gradients
        "concat": lambda: (ml.concatenate([a, b]) * 2.0).sum(),  # views of one array
        "mlp": lambda: cross_entropy((a @ w).relu() + 0.1, np.array([0, 1, 1])),
        "fan-out": lambda: (a * a + a.tanh() * b).sum(),
        "index": lambda: (a[np.array([0, 0, 2])] * b[1]).sum(),
    }
    leaves = [a, w] if name == "mlp" else [a, b]
    _twice(fns[name], leaves)


def test_first_gradients_of_two_leaves_never_share_memory():
    rng = np.random.default_rng(2)
    a, b = leaf(rng, (2, 3)), leaf(rng, (2, 3))
    (a + b).backward(np.ones((2, 3)))
    a.grad += 1.0
    np.testing.assert_array_equal(b.grad, np.ones((2, 3)))
    c, d = leaf(rng, (2, 3)), leaf(rng, (2, 3))
    ml.concatenate([c, d]).backward(np.arange(12.0).reshape(4, 3))
    c.grad[...] = -1.0
    np.testing.assert_array_equal(d.grad, np.arange(6.0, 12.0).reshape(2, 3))


def test_backward_into_a_preset_gradient_buffer_fills_it_in_place():
    """A gradient set before backward (e.g. a view of a communication bucket) is added into."""
    rng = np.random.default_rng(3)
    w = leaf(rng, (3, 2))
    bucket = np.zeros(8)
    w.grad = bucket[:6].reshape(3, 2)
    (w * 3.0).sum().backward()
    np.testing.assert_array_equal(bucket[:6], 3.0)


def test_two_graphs_accumulate_and_zero_grad_resets():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 2.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0 + 2.0, 2.0 + 4.0])
    x.zero_grad()
    assert x.grad is None


def test_backward_needs_a_gradient_for_non_scalars_and_a_graph():
    x = Tensor(np.ones((2, 2)), requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        (x * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()
    (x * 2.0).backward(np.full((2, 2), 0.5))
    np.testing.assert_array_equal(x.grad, np.ones((2, 2)))


def test_the_graph_is_freed_by_reference_counting():
    import gc
    import weakref
    gc.disable()
    try:
        x = Tensor(np.ones((4, 4)), requires_grad=True)
        y = (x * 2.0).relu().sum()
        inner = weakref.ref(y._parents[0].data)  # an intermediate's array
        y.backward()
        del y
        assert inner() is None
    finally:
        gc.enable()


# ------------------------------------------------------------------ no_grad
def test_no_grad_records_nothing_and_restores_the_mode():
    x = Tensor(np.ones(3), requires_grad=True)
    with no_grad():
        assert not is_grad_enabled()
        y = x * 2.0 + x
        with no_grad():
            pass
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert not y.requires_grad and y.is_leaf and y._parents == ()
    with pytest.raises(ValueError), no_grad():
        raise ValueError
    assert is_grad_enabled()
    assert (x * 2.0).requires_grad


def test_detach_cuts_the_graph():
    x = Tensor(np.ones(3), requires_grad=True)
    y = (x * 2.0).detach()
    assert not y.requires_grad
    z = (y * x).sum()
    z.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


# ------------------------------------------------------------------ float32 stays float32
F32_OPS = {
    "add py": lambda x, w: x + 0.5,
    "add np64": lambda x, w: x + np.float64(0.5),
    "radd 0-d": lambda x, w: np.array(0.5) + x,
    "sub": lambda x, w: x - np.float64(1.0),
    "rsub": lambda x, w: np.float64(1.0) - x,
    "mul": lambda x, w: x * np.float64(3.0),
    "rmul": lambda x, w: np.float64(3.0) * x,
    "div": lambda x, w: x / np.float64(3.0),
    "rdiv": lambda x, w: np.float64(3.0) / (x * x + 1.0),
    "pow": lambda x, w: (x * x + 1.0) ** 1.5,
    "pow np": lambda x, w: (x * x + 1.0) ** np.float64(0.5),
    "array64": lambda x, w: x * np.full(x.shape, 2.0),
    "matmul": lambda x, w: x @ w,
    "matmul array64": lambda x, w: x @ np.ones((4, 2)),
    "mean": lambda x, w: x.mean(axis=0),
    "sum": lambda x, w: x.sum(axis=1, keepdims=True),
    "max": lambda x, w: x.max(axis=1),
    "exp log": lambda x, w: (x.exp() + 1.0).log(),
    "act": lambda x, w: x.relu() + x.sigmoid() + x.tanh(),
    "shape": lambda x, w: ml.stack([x.T, x.T])[:, 1:, ::2].reshape(-1),
    "cat": lambda x, w: ml.concatenate(ml.split(x, 2, axis=1)[::-1], axis=1),
    "index": lambda x, w: x[np.array([0, 0, 2])],
    "log_softmax": lambda x, w: log_softmax(x),
    "ce": lambda x, w: cross_entropy(x @ w, np.array([0, 1, 1])),
    "bce": lambda x, w: binary_cross_entropy((x @ w).sigmoid(), np.ones((3, 2))),
    "bce logits": lambda x, w: binary_cross_entropy_with_logits(x @ w, np.ones((3, 2))),
    "mse": lambda x, w: mse(x @ w, np.zeros((3, 2))),
}


@pytest.mark.parametrize("name", sorted(F32_OPS))
def test_float32_in_float32_out_and_float32_gradients(name):
    rng = np.random.default_rng(4)
    x = Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 2)).astype(np.float32), requires_grad=True)
    out = F32_OPS[name](x, w)
    assert out.dtype == np.float32
    # every intermediate gradient must be float32 too, not just the (cast) leaf gradients
    dtypes = set()

    def spy(node):
        back = node._backward
        if back is not None and not getattr(back, "_spied", False):
            def wrapped(g):
                grads = back(g)
                dtypes.update(a.dtype for a in grads if a is not None)
                return grads
            wrapped._spied = True
            node._backward = wrapped
            for parent in node._parents:
                spy(parent)
    spy(out)
    out.backward(np.ones(out.shape, dtype=np.float32))
    assert dtypes and dtypes <= {np.dtype(np.float32)}, dtypes
    for t in (x, w):
        assert t.grad is None or t.grad.dtype == np.float32


def test_new_tensors_take_the_default_dtype_and_floats_keep_theirs():
    assert Tensor([1, 2]).dtype == ml.backend.default_dtype()
    assert Tensor(np.arange(3)).dtype == ml.backend.default_dtype()
    assert Tensor(np.zeros(2, dtype=np.float64)).dtype == np.float64
    assert Tensor(np.zeros(2), dtype=np.float32).dtype == np.float32


# ------------------------------------------------------------------ gradcheck itself
def test_gradcheck_names_the_input_and_the_index_of_a_wrong_backward():
    def wrong_at_one_element(a):
        def backward(g):
            grad = g.copy()
            grad[1, 2] += 1.0  # a deliberate bug at one element
            return (grad,)
        return Tensor._make(a.data.copy(), (a,), backward)

    rng = np.random.default_rng(5)
    x, y = leaf(rng, (2, 3)), leaf(rng, (3, 4))
    with pytest.raises(GradcheckError, match=re.escape("input 1 (shape (3, 4)) differs at "
                                                       "index (1, 2)")):
        gradcheck(lambda a, b: (a @ wrong_at_one_element(b)), [x, y])

    def wrong_scale(a):
        return Tensor._make(a.data * 2.0, (a,), lambda g: (g * 3.0,))
    with pytest.raises(GradcheckError, match=r"input 0 .* index \(0, 0\).*6 of 6"):
        gradcheck(wrong_scale, [x])


def test_gradcheck_refuses_float32():
    x = Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="float64"):
        gradcheck(lambda a: a * 2.0, [x])


# ------------------------------------------------------------------ the article's example
def test_article_worked_example_logistic_regression_one_sgd_step():
    """x=1, y=1, w=1, b=0, lr=0.01 (the article's §4, with its arithmetic corrected)."""
    model = ml.nn.logistic_regression(1, dtype="float64")
    model.load_state_dict({"0.weight": np.array([[1.0]]), "0.bias": np.array([0.0])})
    opt = ml.optim.SGD(model.parameters(), lr=0.01)
    y_hat = model(Tensor(np.array([[1.0]])))
    loss = ml.nn.functional.binary_cross_entropy(y_hat, np.array([[1.0]]))
    loss.backward()
    weight, bias = model[0].weight, model[0].bias
    assert y_hat.item() == pytest.approx(0.7310586, abs=5e-8)
    assert loss.item() == pytest.approx(0.3132617, abs=5e-8)
    assert weight.grad.item() == pytest.approx(-0.2689414, abs=5e-8)
    assert bias.grad.item() == pytest.approx(-0.2689414, abs=5e-8)
    opt.step()
    assert weight.item() == pytest.approx(1.0026894, abs=5e-8)
    assert bias.item() == pytest.approx(0.0026894, abs=5e-8)


def test_a_deep_graph_needs_no_recursion():
    x = Tensor(np.array([1.0]), requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0])


@CHECK
@given(seed=seeds, n=st.integers(1, 4), k=st.integers(1, 4), m=st.integers(1, 4),
       bias=st.booleans(), x_grad=st.booleans())
def test_fused_linear_matches_its_unfused_form(seed, n, k, m, bias, x_grad):
    rng = np.random.default_rng(seed)
    x, w = leaf(rng, (n, k), requires_grad=x_grad), leaf(rng, (k, m))
    b = leaf(rng, (m,)) if bias else None
    inputs = [x, w] + ([b] if bias else [])
    gradcheck(lambda *t: ml.nn.functional.linear(*t), inputs)
    out = ml.nn.functional.linear(x, w, b)
    np.testing.assert_allclose(out.data, x.data @ w.data + (b.data if bias else 0.0))
    x3 = leaf(rng, (2, n, k))  # other shapes take the unfused path
    gradcheck(lambda a, c: ml.nn.functional.linear(a, c), [x3, w])
