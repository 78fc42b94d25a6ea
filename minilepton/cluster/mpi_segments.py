"""The MPI library's shared-memory files of a rank, and the one rule for removing them.

MPICH maps its intra-node segments from ``/dev/shm/mpich_shm_*`` and hydra's proxy writes the
node's topology to ``/tmp/hydra_hwloc_xmlfile_*``; a job that ends in ``MPI_Abort`` or a signal
leaves them behind. ``mpi_segments()`` lists this rank's (from ``/proc``), and
``unlink_segments`` removes only such files: named as MPICH names them, directly in /dev/shm (or
hydra's in /tmp), regular files this user owns, never through a link.
"""

from __future__ import annotations

import os
import re
import stat

# The only files a job's clean-up may unlink: MPICH's segments and the topology file that
# hydra's proxy writes with mkstemp (a hard-coded /tmp) and removes only when the job ends well.
_SEGMENT = re.compile(r"/dev/shm/mpich_shm_[A-Za-z0-9_]+|/tmp/hydra_hwloc_xmlfile_[A-Za-z0-9]+")


def mpi_segments(manager_pid: int | None = None, pid: int | str = "self") -> list[str]:
    """MPICH's files of a rank (Linux; ``pid``, default this process): the /dev/shm segments it
    has mapped and the topology file that its hydra proxy (``manager_pid``, default the parent
    process) holds open."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            mapped = {row[-1] for row in map(str.split, f) if len(row) == 6}
    except OSError:
        return []
    proxy_fds = f"/proc/{os.getppid() if manager_pid is None else manager_pid}/fd"
    try:
        held = {os.readlink(os.path.join(proxy_fds, fd)) for fd in os.listdir(proxy_fds)}
    except OSError:  # gone, or not ours to read
        held = set()
    return sorted(path for path in mapped | held if _SEGMENT.fullmatch(path))


def is_segment(path: str, uid: int | None = None) -> bool:
    """True if ``path`` is an MPI segment this user may remove: an MPICH name directly in
    /dev/shm (or hydra's topology file), a regular file (not a link) owned by ``uid``."""
    if not isinstance(path, str) or not _SEGMENT.fullmatch(path):
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_uid == (os.geteuid() if uid is None else uid)


def unlink_segments(paths) -> None:
    """Remove the MPI segments among ``paths`` (anything else is left alone, see
    ``is_segment``); the ranks that mapped them keep their mappings."""
    for path in paths:
        if is_segment(path):
            try:
                os.unlink(path)
            except OSError:
                pass
