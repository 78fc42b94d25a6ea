"""Single-copy all-reduce of private arrays: read a peer's memory with ``process_vm_readv``.

A private NumPy array lives in its own process; the staged paths copy it into shared memory
so that peers can read it, and copy results back out: two extra copies per byte. Linux lets a
process read another process of the same user directly (cross-memory attach, the
``process_vm_readv`` system call that MPICH and Open MPI use for large messages), so each rank
only publishes where its array is and the peers pull what they need:

    reduce-scatter  rank r pulls part r of every peer's array, a cache block at a time, and
                    folds the blocks in rank order into part r of its own array
    all-gather      rank r pulls part q, now reduced, from rank q, straight into its array

Three waits per call ("inputs ready" with the addresses, "parts reduced", "done reading": no
rank returns, and lets its caller write, while a peer still reads). The bits are the
reference's: the same fold, in the same rank order. Where Yama lets a process read only its
descendants, each worker declares the launcher its debugger at start-up (``let_job_read``);
where the kernel still refuses (a container's seccomp filter, a stricter Yama scope),
``available`` says so once per group, every rank agreeing, and the staged paths run instead.

Each system call pins the pages it reads, a cost per call that a memcpy does not pay, so below
``ShmConfig.single_copy_min_bytes`` (4 MiB) the staged split path wins. Measured at P = 2 on
2 cores (µs per call, split → single copy): 2 MiB 334 → 399, 4 MiB 647 → 615, 8 MiB 1282 →
1080, 16 MiB 2556 → 1888. On by default when every worker has a core of its own (the staging
ring is then mapped up front: this path leaves its slots cold, and the smaller calls after it
once paid for their first touch; benchmarks/README.md, "What made the later calls slower").
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from ..base import CommError
from ..fold import block_bounds
from .fast import BLOCK_BYTES, _scratch, fold_into

PULL_BYTES = BLOCK_BYTES  # a block pulled from a peer and folded while it is in cache (256 KiB
                          # beat 128 KiB, 512 KiB, 1 MiB and 4 MiB at 4-16 MiB)


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _libc(name: str):
    """The C library's function ``name``, or None where there is none (not Linux, old libc)."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


def _syscall():
    """libc's ``process_vm_readv`` with its argument types, or None."""
    fn = _libc("process_vm_readv")
    if fn is not None:
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                       ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    return fn


_READV = _syscall()
_PRCTL = _libc("prctl")
_PR_SET_PTRACER = 0x59616D61  # prctl option of Yama ("Yama" in ASCII)


def let_job_read(launcher_pid: int) -> bool:
    """Declare the launcher this worker's debugger (``PR_SET_PTRACER``), so that where Yama
    lets a process read only its descendants (``ptrace_scope`` 1, Ubuntu's default) the
    launcher's descendants, the other workers of the job, may read this one. True if the
    kernel took it; without Yama it refuses and nothing changes (any process of the same user
    may read this one already)."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PTRACER, ctypes.c_ulong(launcher_pid),
                                         0, 0, 0) == 0


def pull(pid: int, address: int, out: np.ndarray) -> None:
    """Copy ``out.nbytes`` bytes from ``address`` in process ``pid`` into ``out``; OSError if
    the kernel refuses or the process is gone."""
    done, total, base = 0, out.nbytes, out.ctypes.data
    while done < total:
        local = _IoVec(base + done, total - done)
        remote = _IoVec(address + done, total - done)
        got = _READV(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if got <= 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err) if err else "nothing read")
        done += got


def available(comm) -> bool:
    """Whether every rank of the group can read every peer (decided once, the same on every
    rank: two exchanges, so call it from a collective every rank makes)."""
    if comm._single_copy is None:
        probe = np.array([comm.rank + 1], np.int64)
        table = comm._exchange([os.getpid(), probe.ctypes.data])
        ok = _READV is not None
        for q in range(comm.world_size):
            if ok and q != comm.rank:
                got = np.zeros(1, np.int64)
                try:
                    pull(int(table[q, 0]), int(table[q, 1]), got)
                except OSError:
                    ok = False
                ok = ok and int(got[0]) == q + 1
        comm._single_copy = bool(comm._exchange([int(ok)])[:, 0].all())
    return comm._single_copy


def allreduce(comm, flat, ufunc, mean: bool) -> None:
    """Every rank's private ``flat`` becomes the fold of all of them, in place."""
    P, r, n, size = comm.world_size, comm.rank, flat.size, flat.itemsize
    table = comm._exchange([os.getpid(), flat.ctypes.data, flat.nbytes])  # inputs ready
    if (table[:, 2] != flat.nbytes).any():
        raise CommError(f"allreduce: the ranks' arrays differ in size: {table[:, 2].tolist()} "
                        "bytes (ranks in order)")
    pids, addresses = table[:, 0].tolist(), table[:, 1].tolist()
    bounds = block_bounds(n, P)
    step = max(PULL_BYTES // size, 1)
    blocks = _blocks(comm, flat.dtype, step)
    a, b = bounds[r], bounds[r + 1]
    for lo in range(a, b, step):
        hi = min(lo + step, b)
        srcs = []
        for q in range(P):
            if q == r:
                srcs.append(flat[lo:hi])
            else:
                _pull(comm, q, pids[q], addresses[q] + lo * size, blocks[q][:hi - lo])
                srcs.append(blocks[q][:hi - lo])
        fold_into(flat[lo:hi], srcs, ufunc, r, blocks[r])
        if mean:
            np.divide(flat[lo:hi], P, out=flat[lo:hi])
    comm._sync("allreduce (parts reduced)")
    for q in range(P):
        if q != r and bounds[q + 1] > bounds[q]:
            _pull(comm, q, pids[q], addresses[q] + bounds[q] * size,
                  flat[bounds[q]:bounds[q + 1]])
    comm._sync("allreduce (done reading)")


def _pull(comm, q: int, pid: int, address: int, out) -> None:
    try:
        pull(pid, address, out)
    except OSError as exc:
        raise CommError(f"allreduce: could not read rank {comm.members[q]}'s array "
                        f"(pid {pid}): {exc}") from None


def _blocks(comm, dtype, step: int) -> list:
    """A buffer of ``step`` items per peer for its pulled blocks, made once per group and dtype;
    at this rank's index the group's fold scratch (``fast._scratch``; ``fold_into`` needs one
    when P > 2)."""
    cache = comm._pull_blocks
    dt = np.dtype(dtype)
    if dt not in cache:
        cache[dt] = [_scratch(comm, dt) if q == comm.rank else np.empty(step, dt)
                     for q in range(comm.world_size)]
    return cache[dt]
