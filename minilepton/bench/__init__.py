"""Benchmarks behind ``minilepton bench NAME [options]``, found by looking in this package.

Each module here is one benchmark. It exposes ``add_arguments(parser)`` (its options, on an
``argparse`` parser) and ``run(args) -> int`` (an exit code); its docstring's first line is its
one-line description. Adding a benchmark is adding a file: nothing is registered by hand.
Benchmarks repeat, interleave and take medians, and print ratios against a baseline measured
in the same run.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def names() -> list[str]:
    """The benchmark modules in this package, sorted (nothing is imported)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__)
                  if not m.name.startswith("_") and not m.ispkg)


def load(name: str):
    """Import benchmark ``name``; ValueError (one line) when it does not exist or is malformed."""
    if name not in names():
        known = ", ".join(names()) or "none installed"
        raise ValueError(f"unknown benchmark {name!r}; available: {known}")
    module = importlib.import_module(f"{__name__}.{name}")
    missing = [attr for attr in ("add_arguments", "run")
               if not callable(getattr(module, attr, None))]
    if missing:
        raise ValueError(f"benchmark {name!r} does not define {' and '.join(missing)}")
    return module


def describe(name: str) -> str:
    """The first line of benchmark ``name``'s docstring."""
    doc = (load(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def build_parser(name: str, parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options parser of benchmark ``name`` (``prog`` is ``minilepton bench NAME``)."""
    module = load(name)
    parser = parser_class(prog=f"minilepton bench {name}", description=module.__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def main(name: str, argv: list[str], parser_class=argparse.ArgumentParser) -> int:
    """Parse ``argv`` with benchmark ``name``'s options and run it; its exit code."""
    args = build_parser(name, parser_class).parse_args(argv)
    return int(load(name).run(args) or 0)
