"""One job's shared memory: a single file in ``/dev/shm`` that every worker maps.

The launcher creates the arena (a sparse file of ``size_bytes``; nothing is touched until it
is handed out), every worker maps the whole of it, and the launcher unlinks it when the job
ends, however it ends. Space is handed out by a bump allocator whose pointer lives in the
arena's first page and is guarded by ``flock`` on the file, so groups made by ``split`` can
allocate at the same time. Arrays are reserved with ``posix_fallocate`` when handed out, so
running out of shared memory is a clear ``ArenaFullError`` at allocation time, not a SIGBUS
later; control blocks (mostly untouched staging space) are only checked against free space.

We use a plain file plus ``mmap`` rather than ``multiprocessing.shared_memory``: the latter's
resource tracker (Python < 3.13) unlinks or warns about segments that worker processes
attach to, while here exactly one process, the launcher, owns the name.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import re
import secrets
import stat
import tempfile

import numpy as np

from ..base import CommError

PREFIX = "minilepton-"
HEADER_BYTES = 4096  # page 0: magic, bump pointer, size
ALIGN_BYTES = 4096
DEFAULT_ARENA_BYTES = 4 << 30  # virtual: a sparse file, only what is allocated uses memory
_MAGIC = 0x6D6C4152454E41  # "mlARENA"


class ArenaFullError(CommError):
    """An allocation does not fit in the arena (or in the machine's shared memory)."""


def shm_dir() -> str:
    """Where segments live: ``/dev/shm`` on Linux, else the temporary directory."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def arena_bytes_default() -> int:
    """``MINILEPTON_ARENA_BYTES`` (accepts ``512MiB``, ``2GiB``) or 4 GiB of virtual space."""
    text = os.environ.get("MINILEPTON_ARENA_BYTES")
    return parse_bytes(text) if text else DEFAULT_ARENA_BYTES


_NAME = re.compile(rf"^{PREFIX}(\d+)-[0-9a-f]{{8}}$")


def reap_orphans() -> list:
    """Unlink this user's arenas whose launcher process no longer exists (killed with SIGKILL,
    say: its workers died with it, see ``cluster.worker``); return their names. A running job has
    mapped its arena already, so even a wrong guess would not disturb it."""
    reaped = []
    try:
        names = os.listdir(shm_dir())
    except OSError:
        return reaped
    for name in names:
        m = _NAME.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            info = os.lstat(os.path.join(shm_dir(), name))
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                continue  # another user's arena (or not an arena): never ours to remove
            os.unlink(os.path.join(shm_dir(), name))
            reaped.append(name)
        except OSError:
            pass
    return reaped


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def parse_bytes(text) -> int:
    """``"64KiB"`` -> 65536; plain integers pass through."""
    if isinstance(text, int):
        return text
    units = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 1000, "mb": 10**6,
             "gb": 10**9, "b": 1}
    s = str(text).strip().lower()
    for unit, scale in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * scale)
    return int(s)


def _round_up(n: int, align: int = ALIGN_BYTES) -> int:
    return (int(n) + align - 1) // align * align


class Arena:
    """A mapped arena. ``Arena.create`` (launcher) makes the file; ``Arena.attach`` maps it."""

    def __init__(self, path: str, size_bytes: int, fd: int, mapped: bool):
        self.path = path
        self.name = os.path.basename(path)
        self.size_bytes = size_bytes
        self._fd = fd
        self.mm = mmap.mmap(fd, size_bytes) if mapped else None
        self.buf = np.frombuffer(self.mm, dtype=np.uint8) if mapped else None
        self.base_addr = self.buf.ctypes.data if mapped else 0

    @classmethod
    def create(cls, size_bytes: int | None = None, mapped: bool = False) -> Arena:
        """Make a new arena file with a job-unique name; the caller must ``unlink`` it."""
        size_bytes = _round_up(size_bytes or arena_bytes_default())
        if size_bytes < 2 * HEADER_BYTES:
            raise ValueError(f"arena of {size_bytes} bytes is too small")
        path = os.path.join(shm_dir(), f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size_bytes)
            os.posix_fallocate(fd, 0, HEADER_BYTES)
            header = np.array([_MAGIC, HEADER_BYTES, size_bytes], dtype=np.int64)
            os.pwrite(fd, header.tobytes(), 0)
            return cls(path, size_bytes, fd, mapped)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise

    @classmethod
    def attach(cls, name: str) -> Arena:
        """Map an existing arena by name (in a worker)."""
        path = os.path.join(shm_dir(), name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise CommError(f"shared-memory arena {name!r} does not exist (job ended?)") from None
        magic, _, size_bytes = np.frombuffer(os.pread(fd, 24, 0), dtype=np.int64)
        if magic != _MAGIC:
            os.close(fd)
            raise CommError(f"{path} is not a minilepton arena")
        return cls(path, int(size_bytes), fd, mapped=True)

    def alloc(self, nbytes: int, what: str = "allocation", reserve: bool = True) -> int:
        """Hand out ``nbytes`` (page aligned) and return their offset; raise when they don't fit.

        ``reserve=True`` backs them with memory now (``posix_fallocate``): arrays that will be
        written whole. ``reserve=False`` only checks that the machine's shared memory has room
        (control blocks, of which only the first pages of each buffer may ever be touched)."""
        nbytes = _round_up(max(int(nbytes), 1))
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            top = int(np.frombuffer(os.pread(self._fd, 8, 8), dtype=np.int64)[0])
            if top + nbytes > self.size_bytes:
                raise ArenaFullError(
                    f"{what} of {nbytes / 2**20:.1f} MiB does not fit in the shared-memory arena "
                    f"({(self.size_bytes - top) / 2**20:.1f} MiB of {self.size_bytes / 2**20:.0f} "
                    "MiB left); raise launch(arena_bytes=...) or MINILEPTON_ARENA_BYTES")
            try:
                if reserve:
                    self.back(top, nbytes)
                else:
                    fs = os.fstatvfs(self._fd)
                    if fs.f_bavail * fs.f_frsize < nbytes:
                        raise OSError(28, "No space left on device")
            except OSError as exc:
                raise ArenaFullError(
                    f"{what} of {nbytes / 2**20:.1f} MiB: the machine's shared memory "
                    f"({shm_dir()}) is full: {exc.strerror}") from None
            os.pwrite(self._fd, np.int64(top + nbytes).tobytes(), 8)
            return top
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def back(self, offset: int, nbytes: int) -> None:
        """Give ``nbytes`` at ``offset`` memory now (``posix_fallocate``; a no-op where they
        have it already); OSError when the machine's shared memory has no room for them."""
        os.posix_fallocate(self._fd, int(offset), int(nbytes))

    def view(self, offset: int, shape, dtype) -> np.ndarray:
        """An array over ``shape``/``dtype`` at byte ``offset`` of the mapped arena."""
        return np.ndarray(shape, dtype=dtype, buffer=self.mm, offset=int(offset))

    def close(self) -> None:
        """Forget the mapping (it goes away with the last array that uses it) and the fd."""
        self.buf = None
        self.mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def unlink(self) -> None:
        """Remove the name (idempotent); mappings stay valid until they are dropped."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
