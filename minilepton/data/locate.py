"""Find a data set's folder, in a fixed order, downloading it into the cache as a last resort.

Search order (the first that applies wins):

1. an explicit ``path`` (``--data-dir``): it must hold the four files, or it is an error;
2. the data set's own environment variable (``MINILEPTON_FASHION_MNIST``, ``MINILEPTON_MNIST``):
   the same, an error if the folder is incomplete;
3. ``$MINILEPTON_DATA/<name>/`` (``fashion-mnist/``, ``mnist/``), when complete;
4. a system package's folder (Debian's ``dataset-fashion-mnist``), when complete;
5. the user cache ``$XDG_CACHE_HOME/minilepton/<name>/`` (``~/.cache/...``), when complete;
6. a download into that cache (unless ``download=False``), checked against the published MD5s.
"""

from __future__ import annotations

from pathlib import Path

from .. import environment
from .download import fetch, how_to_provide
from .errors import DataError
from .sources import DATA_ROOT_ENV, Source, cache_dir, missing_files


def _require_complete(directory: Path, what: str) -> Path:
    if not directory.is_dir():
        raise DataError(f"{what} {directory} is not a folder")
    missing = missing_files(directory)
    if missing:
        raise DataError(f"{what} {directory} lacks {', '.join(missing)} "
                        f"(the .gz or uncompressed IDX files)")
    return directory


def candidates(source: Source) -> list[Path]:
    """The folders searched after the explicit path and the data set's variable, in order."""
    found = []
    root = environment.read(DATA_ROOT_ENV)
    if root:
        found.append(Path(root) / source.name)
    found.extend(Path(d) for d in source.system_dirs)
    found.append(cache_dir(source))
    return found


def locate(source: Source, path=None, download: bool = True) -> Path:
    """The folder holding ``source``'s four IDX files (see the module docstring for the order)."""
    if path is not None:
        return _require_complete(Path(path), f"{source.title} folder")
    env_dir = environment.read(source.env_var)
    if env_dir:
        return _require_complete(Path(env_dir), f"{source.env_var} folder")
    for directory in candidates(source):
        if directory.is_dir() and not missing_files(directory):
            return directory
    if not download:
        searched = ", ".join(str(d) for d in candidates(source))
        raise DataError(f"{source.title} not found (searched {searched}) and download=False. "
                        + how_to_provide(source))
    return fetch(source, cache_dir(source))
