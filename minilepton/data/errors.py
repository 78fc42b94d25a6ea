"""The errors of the data package: one base type, so callers can catch every data problem at once.

``DataError`` (a ``ValueError``) covers missing, incomplete or inconsistent data: a folder without
the four IDX files, labels outside 0..9, a failed download, an unknown dataset name.
``IDXError`` (a ``DataError``) is a file that is not a well-formed IDX file: bad magic number,
truncated header or payload, trailing bytes, a corrupt gzip stream. Messages are one line and name
the file.
"""

from __future__ import annotations


class DataError(ValueError):
    """Data that cannot be found, read, or trusted; the message says which and what to do."""


class IDXError(DataError):
    """A file that is not a well-formed IDX file (or gzip of one); the message names the file."""
