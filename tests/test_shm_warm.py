"""What a warm shared-memory group costs per call: no page faults on the staging ring once it is
mapped up front, and no attribute added to the communicator by the calls themselves.

Both were found by measurement (benchmarks/README.md, "What made later calls slower"): a
slot's pages faulted in inside the first call that used the slot (about 1,100 faults per rank in
the 1 MiB all-reduces after a barrier), and a cache made through ``comm.__dict__`` made every
later call slower. Counting faults and attributes instead of time keeps the tests exact.
"""

from __future__ import annotations

import resource

import numpy as np
import pytest
from conftest import run_job

from minilepton.comm.shm import ShmConfig
from minilepton.comm.shm.arena import Arena

CALLS = 20  # ten 1 MiB all-reduces, a barrier (an odd step), ten more: every slot is used


def faults_job(comm):
    x = np.ones((1 << 20) // 4, np.float32)  # one slot: the staged split path
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for k in range(CALLS):
        comm.allreduce(x)
        if k == CALLS // 2 - 1:
            comm.barrier()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def _ring(prefault: bool) -> ShmConfig:
    return ShmConfig(stage_bytes=1 << 20, single_copy=False, prefault_ring=prefault)


def _shmem_huge_pages() -> bool:
    """Whether /dev/shm may hand out 2 MiB pages: a fault then maps 512 pages at once, and the
    unmapped ring takes a handful of faults instead of thousands."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            chosen = f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return False
    return chosen in ("always", "within_size", "force")


lazy_ring_faults = pytest.mark.skipif(_shmem_huge_pages(), reason="shared memory in huge pages")


@lazy_ring_faults
@pytest.mark.timeout(60)
def test_a_prefaulted_ring_takes_no_page_faults_in_the_calls():
    lazy = run_job("shm", faults_job, 2, config=_ring(False))
    mapped = run_job("shm", faults_job, 2, config=_ring(True))
    assert min(lazy) > 1000  # 8 slots of 256 pages each, met inside the calls
    assert max(mapped) < 100


@lazy_ring_faults
@pytest.mark.timeout(60)
def test_without_room_for_the_ring_its_pages_come_when_used(monkeypatch):
    def no_room(self, offset, nbytes):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Arena, "back", no_room)  # the workers are forked: they see it too
    assert min(run_job("shm", faults_job, 2, config=_ring(True))) > 1000


def attributes_job(comm):
    names = set(vars(comm))
    arrays = {"small": np.ones(10), "split": np.ones(1 << 16), "single": np.ones(1 << 20),
              "arena": comm.zeros(1 << 17, np.float64)}
    for x in arrays.values():
        comm.allreduce(x)
    return sorted(set(vars(comm)) - names)


@pytest.mark.timeout(60)
def test_the_collectives_add_no_attribute_to_the_communicator():
    got = run_job("shm", attributes_job, 2, config=ShmConfig(single_copy=True))
    assert got == [[], []]


@pytest.mark.parametrize("workers, cores, on", [(2, 2, True), (2, 16, True), (4, 2, False)])
def test_ring_and_single_copy_default_to_a_core_per_worker(workers, cores, on):
    cfg = ShmConfig().resolve(workers, cores=cores)
    assert cfg.prefault_ring is on and cfg.single_copy is on
    assert ShmConfig(single_copy=False).resolve(workers, cores=cores).single_copy is False
