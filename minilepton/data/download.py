"""Fetch the four files of a data set into a folder, checking each against its published MD5.

Each file streams into a temporary file next to its destination and is renamed into place
(``minilepton.files.atomic_write``) only after its MD5 matches, so an interrupted or
corrupted download never leaves a file that looks complete. Mirrors are tried in order.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import urllib.request
from pathlib import Path

from ..files import atomic_write
from .errors import DataError
from .sources import DATA_ROOT_ENV, FILE_NAMES, Source, cache_dir

log = logging.getLogger(__name__)
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 20.0


class ChecksumError(DataError):
    """A downloaded file's MD5 differs from the published one (the file was discarded)."""


def _open_url(url: str, timeout_s: float):
    """The one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout_s)


def fetch_file(url: str, dest: Path, md5: str, timeout_s: float = TIMEOUT_S) -> None:
    """Download ``url`` to ``dest`` atomically; ``ChecksumError`` (and no file) if the MD5 differs.

    Network failures propagate as ``OSError`` (``URLError`` is one) for the caller to report.
    """
    def stream_and_check(out) -> None:
        digest = hashlib.md5(usedforsecurity=False)
        with _open_url(url, timeout_s) as response:
            while chunk := response.read(CHUNK_BYTES):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:  # raising here discards the temporary file
            raise ChecksumError(f"{url}: MD5 {digest.hexdigest()} differs from the published "
                                f"{md5}; download discarded")
    atomic_write(dest, stream_and_check)


def fetch(source: Source, dest_dir, timeout_s: float = TIMEOUT_S) -> Path:
    """Download the files of ``source`` that ``dest_dir`` lacks; return ``dest_dir``.

    Raises ``DataError`` naming the failure and where to put the files by hand.
    """
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {dest_dir}: {exc.strerror or exc}") \
            from None
    wanted = [name for name in source.md5 if not (dest_dir / name).is_file()]
    if wanted:
        log.warning("%s not found locally; downloading %d file(s) into %s",
                    source.title, len(wanted), dest_dir)
    for name in wanted:
        dest, md5 = dest_dir / name, source.md5[name]
        failures = []
        for mirror in source.mirrors:
            url = mirror + name
            log.info("downloading %s", url)
            try:
                fetch_file(url, dest, md5, timeout_s)
                break
            except ChecksumError as exc:
                failures.append(str(exc))
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        else:
            raise DataError(f"{source.title} could not be downloaded ({'; '.join(failures)}). "
                            + how_to_provide(source))
    return dest_dir


def how_to_provide(source: Source) -> str:
    """One sentence: the ways to give minilepton the files without a download."""
    ways = [f"put {', '.join(FILE_NAMES)} in {cache_dir(source)}",
            f"set {source.env_var}=DIR (or {DATA_ROOT_ENV}=ROOT with ROOT/{source.name}/)"]
    if source.install_hint:
        ways.append(f"run `{source.install_hint}`")
    return "To use it offline, " + ", or ".join(ways) + "."
