"""Waiting on shared memory: progress counters polled with a bounded wait that yields.

Every rank of a group owns one 64-bit *step counter* on its own cache line. To take part in
step s, a rank writes its data, then stores s in its counter ("I have arrived at s"), then
waits until every peer's counter is >= s. Because a rank only reaches step s+1 after finishing
step s, a counter >= s+1 also says "I am done reading the data of step s": buffers indexed by
``step % depth`` (depth >= 2) can be rewritten without any further handshake.

Why polling: a blocking primitive (``multiprocessing.Barrier``, a semaphore) costs about
150 µs per crossing on a small machine, fifty times an MPI all-reduce of 1 KiB. Polling a
counter costs tens of nanoseconds; the wait spins for ``spin_s`` (long when every worker has
a core of its own: giving the core away costs far more than a late peer; short when workers
outnumber cores: the late peer may need this very core), then yields the core, then sleeps in
growing steps, and gives up after ``timeout_s`` with a ``CommError`` naming the ranks that did
not arrive.

Counters are read and written through a ``memoryview`` cast to int64: an aligned 8-byte load
or store, which x86-64 and ARM64 perform atomically; x86's ordered stores make "data, then
counter" visible in that order to the reader.
"""

from __future__ import annotations

import time

from ..base import CommError, yield_core

LINE = 8            # int64 slots per 64-byte cache line
SPIN_S_DEDICATED = 200e-6  # spin this long when every worker has its own core
SPIN_S_SHARED = 3e-6       # ... and this long when workers outnumber the cores
YIELD_S = 1e-3      # then yield the core until this long has passed, then sleep
MAX_SLEEP_S = 200e-6  # sleeps grow from 10 µs to this (a late wake-up costs latency)


def spin_default(world_size: int, cores: int) -> float:
    """How long a wait spins before yielding, for ``world_size`` workers on ``cores`` cores."""
    return SPIN_S_DEDICATED if world_size <= cores else SPIN_S_SHARED


def wait_counters(ctr, indices, target: int, timeout_s: float, what, members=None,
                  spin_s: float = SPIN_S_SHARED) -> None:
    """Return once ``ctr[i] >= target`` for every ``i`` in ``indices``; raise CommError otherwise.

    ``ctr`` is an int64 memoryview, ``indices`` the positions to watch (rank * LINE), ``what``
    a string (or callable giving one) describing the operation for the error message,
    ``members`` maps a group rank to the rank named in errors, ``spin_s`` is the busy phase.
    """
    for i in indices:          # fast path: everyone is already there
        if ctr[i] < target:
            break
    else:
        return
    if not _poll(ctr, indices, target, timeout_s, spin_s):
        missing = [i // LINE for i in indices if ctr[i] < target]
        if members is not None:
            missing = [members[r] for r in missing]
        raise CommError(f"{_text(what)}: rank(s) {missing} did not arrive within {timeout_s:g} s "
                        "(stalled or dead); raise MINILEPTON_COMM_TIMEOUT_S if they are just slow")


def wait_value(ctr, index: int, target: int, timeout_s: float, what,
               spin_s: float = SPIN_S_SHARED) -> None:
    """Return once ``ctr[index] >= target`` (a channel's head or tail, advanced by one peer);
    raise CommError after the timeout. ``what`` describes the wait for the error message."""
    if ctr[index] < target and not _poll(ctr, (index,), target, timeout_s, spin_s):
        raise CommError(f"{_text(what)} within {timeout_s:g} s (peer stalled or dead)")


def _poll(ctr, indices, target: int, timeout_s: float, spin_s: float) -> bool:
    """Poll until ``ctr[i] >= target`` for every ``i``: spin for ``spin_s``, then yield the core
    until ``YIELD_S``, then sleep in growing steps; False once ``timeout_s`` has passed."""
    polls = 0
    t_start = time.monotonic()
    sleep_s = 1e-5
    while True:
        for i in indices:
            if ctr[i] < target:
                break
        else:
            return True
        polls += 1
        if polls & 15:
            continue
        waited_s = time.monotonic() - t_start
        if waited_s < spin_s:
            continue
        if waited_s < YIELD_S:
            yield_core()
            continue
        if waited_s > timeout_s:
            return False
        time.sleep(sleep_s)
        sleep_s = min(sleep_s * 2, MAX_SLEEP_S)


def _text(what) -> str:
    return what() if callable(what) else what
