"""Every fast path of the shared-memory backend gives the reference algorithm's bits.

Each rank runs ``reference`` and every ``fast`` function on the same input and compares the
bytes (values spread over six decades, so a different order of the fold changes the bits);
the parent checks that every rank got the same bits. The dispatch table is tested without a
process: which path a call takes, by size, place and algorithm; and every path counts itself
once, through ``CommStats.record``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_job, small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_collectives import data  # rank inputs over six decades: order changes the bits

from minilepton.comm import CommStats, ShmConfig
from minilepton.comm.fold import UFUNCS
from minilepton.comm.shm import dispatch, fast, reference, single_copy


def _arena_copy(comm, x, view: bool):
    """``x`` in the arena: an array of its own, or a view inside a larger buffer (a bucket)."""
    if view:
        y = comm.zeros((x.size + 7,), x.dtype)[5:5 + x.size]
    else:
        y = comm.zeros((x.size,), x.dtype)
    y[...] = x
    return y


def _allreduce_case(comm, case):
    x = data(case["seed"], comm.rank, case["n"], case["dtype"])
    op, uf, mean = case["op"], UFUNCS[case["op"]], case["op"] == "mean"
    want = x.copy()
    reference.allreduce(comm, want, uf, mean)
    got = {}
    if 0 < x.nbytes <= comm.config.stage_bytes:
        got["small"] = fast.allreduce_small(comm, x.copy(), op)
    y = _arena_copy(comm, x, case["view"])
    fast.allreduce_arena(comm, y, uf, mean)
    got["arena"] = np.array(y)
    got["split"] = x.copy()
    fast.allreduce_split(comm, got["split"], uf, mean)
    if single_copy.available(comm):  # where the kernel lets ranks read each other
        got["single"] = x.copy()
        single_copy.allreduce(comm, got["single"], uf, mean)
    got["dispatch"] = comm.allreduce(x.copy(), op=op)
    return want, got


def _other_case(comm, case):
    P, kind = comm.world_size, case["kind"]
    x = data(case["seed"], comm.rank, case["n"] * P, case["dtype"])
    y = _arena_copy(comm, x, case["view"])
    if kind == "reduce_scatter":
        want, got = np.empty(case["n"], x.dtype), np.empty(case["n"], x.dtype)
        reference.reduce_scatter(comm, x, want, UFUNCS[case["op"]])
        fast.reduce_scatter_arena(comm, y, got, UFUNCS[case["op"]])
    elif kind == "allgather":
        want, got = np.empty((P, x.size), x.dtype), np.empty((P, x.size), x.dtype)
        reference.allgather(comm, x, want)
        fast.allgather_arena(comm, y, got)
    else:
        root = case["seed"] % P
        want = x.copy()
        reference.broadcast(comm, want, root)
        fast.broadcast_arena(comm, y, root)
        got = np.array(y)
    return want, {"arena": got}


def fast_paths_job(comm, cases):
    out = []
    for case in cases:
        want, got = (_allreduce_case if case["kind"] == "allreduce" else _other_case)(comm, case)
        for name, value in got.items():
            assert value.tobytes() == want.tobytes(), (name, case)
        out.append(want.tobytes())
    return out


CONFIGS = {  # small slots and pieces: many chunks; no pipelining: one piece per chunk
    "small": small_config(),
    "unpipelined": ShmConfig(stage_depth=4, stage_bytes=4096, pipeline_bytes=0,
                             arena_min_bytes=0, split_min_bytes=0),
}

cases = st.fixed_dictionaries({
    "kind": st.sampled_from(["allreduce", "allreduce", "reduce_scatter", "allgather",
                             "broadcast"]),
    "seed": st.integers(0, 2**31), "n": st.integers(0, 3000),
    "dtype": st.sampled_from([np.float32, np.float64]),
    "op": st.sampled_from(["sum", "mean", "max"]), "view": st.booleans()})


@pytest.mark.timeout(180)
def test_every_fast_path_gives_the_reference_bits():
    @settings(max_examples=8, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(P=st.integers(2, 4), config=st.sampled_from(sorted(CONFIGS)),
           cases=st.lists(cases, min_size=4, max_size=10))
    def check(P, config, cases):
        results = run_job("shm", fast_paths_job, P, (cases,), config=CONFIGS[config])
        for i, case in enumerate(cases):
            if case["kind"] != "reduce_scatter":  # there each rank holds its own block
                assert len({results[r][i] for r in range(P)}) == 1, case

    check()


# ---- the dispatch table, without a process
def _comm(P=2, nbytes_slot=1 << 20, arena=False, watched=False):
    cfg = SimpleNamespace(split_min_bytes=256 << 10, single_copy=True,
                          single_copy_min_bytes=4 << 20)
    return SimpleNamespace(world_size=P, arena_min_bytes=256 << 10, config=cfg,
                           _small_bytes=nbytes_slot, hooks=[print] if watched else [],
                           link=None, verbose=False, in_arena=lambda x: arena)


@pytest.mark.parametrize("P, nbytes, arena, watched, algorithm, want", [
    (2, 1024, False, False, None, "small"),
    (2, 1024, False, True, None, "staged"),        # hooks see every call: no inline path
    (2, 0, False, False, None, "staged"),
    (2, 1024, True, False, None, "small"),         # small arena arrays: one wait beats three
    (2, 1 << 20, True, False, None, "arena"),
    (2, 256 << 10, False, False, None, "small"),
    (2, 512 << 10, False, False, None, "split"),   # private, over split_min_bytes: any P
    (2, 4 << 20, False, False, None, "split"),
    (2, 8 << 20, False, False, None, "single"),   # over single_copy_min_bytes, where allowed
    (4, 1024, False, False, None, "small"),
    (4, 1 << 20, False, False, None, "split"),
    (4, 1 << 20, True, False, "rsag", "arena"),
    (3, 1024, False, False, "ring", "ring"),
    (1, 1 << 20, True, False, None, "staged"),
])
def test_the_dispatch_table_picks_a_path_by_size_place_and_algorithm(P, nbytes, arena, watched,
                                                                     algorithm, want, monkeypatch):
    monkeypatch.setattr(single_copy, "available", lambda comm: True)
    x = np.zeros(nbytes // 4, np.float32)
    assert dispatch.path(_comm(P, arena=arena, watched=watched), "allreduce", x,
                         algorithm) == want
    for collective in ("reduce_scatter", "allgather", "broadcast"):
        assert dispatch.path(_comm(P, arena=arena), collective, x) == (
            "arena" if arena and P > 1 else "staged")
    assert ("allreduce", want) in dispatch.TABLE


# ---- one counter method for every path
def counting_job(comm):
    calls = []
    record = comm.stats.record
    comm.stats.record = lambda op, *rest: (calls.append(op), record(op, *rest))
    P, r = comm.world_size, comm.rank
    private, arena = np.ones(600), comm.zeros((600,))
    comm.allreduce(np.ones(8))                 # small
    comm.allreduce(private)                    # split (over split_min_bytes) or staged
    comm.allreduce(arena)                      # arena
    comm.allreduce(private, algorithm="ring")
    comm.hooks.append(lambda *event: None)
    comm.allreduce(np.ones(8))                 # staged: a hook is watching
    comm.reduce_scatter(np.ones(6 * P))
    comm.reduce_scatter(comm.zeros((6 * P,)))
    comm.allgather(private)
    comm.allgather(arena)
    comm.broadcast(private)
    comm.broadcast(arena)
    comm.barrier()
    comm.send(private, (r + 1) % P)
    comm.recv(private, (r - 1) % P)
    return calls, comm.stats.as_dict()


@pytest.mark.timeout(60)
def test_every_path_counts_once_through_one_method():
    for calls, stats in run_job("shm", counting_job, 3):
        assert calls == ["allreduce"] * 5 + ["reduce_scatter"] * 2 + ["allgather"] * 2 + [
            "broadcast"] * 2 + ["barrier", "send", "recv"]
        assert stats["calls"] == {op: calls.count(op) for op in set(calls)}
    assert CommStats().as_dict() == {"bytes_sent": 0, "messages_sent": 0, "calls": {},
                                     "seconds": {}}
