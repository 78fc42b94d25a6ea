"""Writing files: whole or not at all, and never through someone else's link.

The package's one atomic-write helper: checkpoints, metrics, saved parameters, traces,
downloads and the launcher's result files all go through it.

``atomic_write(path, write)`` creates a fresh temporary file next to ``path`` with
``tempfile.mkstemp`` (``O_CREAT | O_EXCL``, mode 0600, a random name: a file or symlink another
user planted cannot be opened in its place), lets ``write(f)`` fill it, flushes it to disk and
renames it over ``path`` (``os.replace``, atomic within a directory). A reader sees the old file
or the new one, never half of one; a failed write removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile


def atomic_write(path, write) -> str:
    """Write ``path`` through ``write(binary_file)`` atomically; return the path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str) -> str:
    """``atomic_write`` of a UTF-8 string."""
    return atomic_write(path, lambda f: f.write(text.encode()))


def check_writable(path, what: str, directory: bool = False) -> None:
    """ValueError (one line, naming ``what``) unless ``path`` can be written later: a file (or,
    with ``directory``, a folder) there or in a folder this user may create files in."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and os.path.isdir(path) != directory:
        kind = "a folder" if os.path.isdir(path) else "a file"
        raise ValueError(f"{what} {path} is {kind}")
    parent = path if directory and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(parent):  # atomic_write creates the missing folders
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{what} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path}: no permission to write in {parent}")
