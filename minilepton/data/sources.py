"""Where each data set can live: its four files, environment variables, system folders, mirrors.

The MD5s are those the data sets' authors publish for their ``.gz`` files. They are checked only
on downloads: local copies are checked by structure instead (``read_idx``), because repackaged
copies (Debian's ``dataset-fashion-mnist``, for one) are recompressed, so their ``.gz`` bytes
differ while the data inside is the same.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import environment

# The four files of an MNIST-format data set, as the authors name them (stem + ".gz").
SPLIT_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FILE_NAMES = tuple(stem + ".gz" for stems in SPLIT_STEMS.values() for stem in stems)
DATA_ROOT_ENV = "MINILEPTON_DATA"  # a root folder holding fashion-mnist/ and mnist/


@dataclass(frozen=True)
class Source:
    """One downloadable MNIST-format data set."""

    name: str                    # as on the command line, and the folder name under caches
    title: str                   # for messages
    env_var: str                 # a folder holding exactly this data set
    system_dirs: tuple           # folders a system package installs the files into
    mirrors: tuple               # base URLs, tried in order
    md5: dict                    # file name -> published MD5 of the .gz
    install_hint: str = ""       # how to get the files from a package manager, if one has them


FASHION_MNIST = Source(
    name="fashion-mnist",
    title="Fashion-MNIST",
    env_var="MINILEPTON_FASHION_MNIST",
    system_dirs=("/usr/share/datasets/fashion-mnist",),  # Debian: dataset-fashion-mnist
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
    md5={"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
    install_hint="apt-get install dataset-fashion-mnist",
)

MNIST = Source(
    name="mnist",
    title="MNIST",
    env_var="MINILEPTON_MNIST",
    system_dirs=(),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    md5={"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
)

SOURCES = {s.name: s for s in (FASHION_MNIST, MNIST)}


def cache_dir(source: Source) -> Path:
    """``$XDG_CACHE_HOME/minilepton/<name>`` (``~/.cache`` when the variable is unset or relative)."""
    base = environment.read("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "minilepton" / source.name


def find_file(directory, stem: str) -> Path | None:
    """The file for ``stem`` in ``directory``: ``stem.gz``, ``stem``, or the dotted MNIST spelling."""
    directory = Path(directory)
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory) -> list[str]:
    """The standard names of the files ``directory`` lacks (all four if it is not a folder)."""
    return [stem + ".gz" for stems in SPLIT_STEMS.values() for stem in stems
            if find_file(directory, stem) is None]
