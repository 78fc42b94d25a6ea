"""The old home of the job's shared-memory arena, now ``minilepton.comm.shm.arena``."""

from __future__ import annotations

from .shm.arena import (  # noqa: F401 - the names other code imports from here
    ALIGN_BYTES,
    PREFIX,
    Arena,
    ArenaFullError,
    arena_bytes_default,
    parse_bytes,
    reap_orphans,
    shm_dir,
)
