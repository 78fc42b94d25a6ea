"""The environment variables minilepton reads: each one's name, what it allows, and its check.

``read(name, default)`` gives a variable's value, parsed, or ``default`` when it is unset or
empty; a value outside what is allowed raises ``BadEnvironment`` (a ``ValueError``) in one line
that names the variable, the value and what is allowed. ``check()`` does that for every
variable at once: the launchers call it before any worker starts, so that a bad value is
refused up front instead of disabling stall detection or failing in a worker.

========================== ==========================================================
MINILEPTON_COMM_TIMEOUT_S  seconds a collective waits for its peers: a finite number > 0
MINILEPTON_ARENA_BYTES     shared-memory arena size: bytes > 0, or with a unit (512MiB)
MINILEPTON_VERBOSE         0 or empty: quiet; 1 (or more): log every communication
MINILEPTON_DATA            a folder holding fashion-mnist/ and mnist/
MINILEPTON_FASHION_MNIST   a folder holding Fashion-MNIST's four IDX files
MINILEPTON_MNIST           a folder holding MNIST's four IDX files
XDG_CACHE_HOME             the folder for per-user caches
LOCAL_RANK                 this worker's index on its node (set by the launchers)
========================== ==========================================================
"""

from __future__ import annotations

import math
import os
import re


class BadEnvironment(ValueError):
    """An environment variable holds a value minilepton does not accept."""


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10,
          "mib": 1 << 20, "gib": 1 << 30}
_BYTES = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?b|b)?\s*", re.IGNORECASE)


def _seconds(text: str) -> float:
    value = float(text)  # ValueError for "abc"
    if not math.isfinite(value) or value <= 0:
        raise ValueError
    return value


def _bytes(text: str) -> int:
    match = _BYTES.fullmatch(text)
    if match is None:
        raise ValueError
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])
    if value <= 0:
        raise ValueError
    return value


def _whole(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError
    return int(text)


def _folder(text: str) -> str:
    if os.path.exists(text) and not os.path.isdir(text):
        raise ValueError
    return text


# name -> (what is allowed, parser); every variable the package reads is here
VARIABLES = {
    "MINILEPTON_COMM_TIMEOUT_S": ("a finite number of seconds > 0 (a collective's wait)",
                                  _seconds),
    "MINILEPTON_ARENA_BYTES": ("a size in bytes > 0, such as 536870912, 512MiB or 2GiB",
                               _bytes),
    "MINILEPTON_VERBOSE": ("0 (quiet) or 1 (log every communication)", _whole),
    "MINILEPTON_DATA": ("a folder (holding fashion-mnist/ and mnist/)", _folder),
    "MINILEPTON_FASHION_MNIST": ("a folder (holding Fashion-MNIST's IDX files)", _folder),
    "MINILEPTON_MNIST": ("a folder (holding MNIST's IDX files)", _folder),
    "XDG_CACHE_HOME": ("a folder", _folder),
    "LOCAL_RANK": ("a whole number >= 0 (the worker's index on its node)", _whole),
}


def read(name: str, default=None, environ=None):
    """``name``'s parsed value, or ``default`` when unset or empty; ``BadEnvironment`` if the
    value is not allowed."""
    allowed, parse = VARIABLES[name]
    text = (os.environ if environ is None else environ).get(name, "")
    if text == "":
        return default
    try:
        return parse(text)
    except (ValueError, OverflowError):
        raise BadEnvironment(f"environment variable {name}={text!r} is not allowed: "
                             f"expected {allowed}") from None


def check(environ=None) -> None:
    """Refuse (``BadEnvironment``, one line) the first variable whose value is not allowed."""
    for name in VARIABLES:
        read(name, environ=environ)
