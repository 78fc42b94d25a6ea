"""The data sets: MNIST and Fashion-MNIST from IDX files, and the embedded Fashion-MNIST subset.

Every loader returns the Keras shape ``((x_train, y_train), (x_test, y_test))``: images are
uint8 arrays (N, 28, 28) with pixels 0..255, labels uint8 arrays (N,) with classes 0..9.
Files are checked by structure (``read_idx``), then for agreement: as many labels as images,
labels within 0..9, 28x28 images.

The embedded default is a class-balanced subset of Fashion-MNIST by Zalando Research
(Han Xiao, Kashif Rasul, Roland Vollgraf, 2017; MIT licence), shipped in
``fashion_mnist_subset.npz`` and made by ``python -m minilepton.data.make_embedded SRC_DIR``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .idx import read_idx
from .locate import locate
from .sources import FASHION_MNIST, MNIST, SPLIT_STEMS, find_file

DATASETS = ("default", "fashion-mnist", "mnist")
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
EMBEDDED_PATH = Path(__file__).with_name("fashion_mnist_subset.npz")


def check_split(x, y, name: str) -> None:
    """Raise ``DataError`` unless ``x`` is (N, 28, 28) uint8 and ``y`` is (N,) labels in 0..9,
    N > 0."""
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{name}: images must be uint8 of shape (N, 28, 28), "
                        f"got {x.dtype} {x.shape}")
    if y.dtype != np.uint8 or y.ndim != 1:
        raise DataError(f"{name}: labels must be a uint8 vector, got {y.dtype} {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{name}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{name}: no images (the files hold an empty set)")
    if len(y) and int(y.max()) >= NUM_CLASSES:
        raise DataError(f"{name}: label {int(y.max())} outside 0..{NUM_CLASSES - 1}")


def read_split(directory, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the ``train`` or ``test`` images and labels from ``directory``; checked."""
    paths = []
    for stem in SPLIT_STEMS[split]:
        path = find_file(directory, stem)
        if path is None:
            raise DataError(f"{directory}: no {stem}.gz (nor uncompressed {stem})")
        paths.append(path)
    x, y = read_idx(paths[0]), read_idx(paths[1])
    check_split(x, y, f"{paths[0]} + {paths[1].name}")
    return x, y


def load_idx_dir(directory):
    """``((x_train, y_train), (x_test, y_test))`` from the four IDX files in ``directory``."""
    return read_split(directory, "train"), read_split(directory, "test")


def load_mnist(path=None, download: bool = True):
    """MNIST from the folder ``path`` (or found/downloaded as ``locate`` describes when None)."""
    return load_idx_dir(locate(MNIST, path, download))


def load_fashion_mnist(path=None, download: bool = True):
    """Fashion-MNIST from ``path``, ``$MINILEPTON_FASHION_MNIST``, ``$MINILEPTON_DATA``, the
    Debian package's folder, the user cache, or (unless ``download=False``) the official mirrors.
    """
    return load_idx_dir(locate(FASHION_MNIST, path, download))


def load_default():
    """The embedded Fashion-MNIST subset: 6,000 train and 1,000 test images, classes balanced."""
    if not EMBEDDED_PATH.is_file():
        raise DataError(f"the embedded data set {EMBEDDED_PATH.name} is missing from the "
                        f"installed package; reinstall minilepton or use --dataset fashion-mnist")
    with np.load(EMBEDDED_PATH, allow_pickle=False) as npz:
        train = npz["x_train"], npz["y_train"]
        test = npz["x_test"], npz["y_test"]
    check_split(*train, EMBEDDED_PATH.name)
    check_split(*test, EMBEDDED_PATH.name)
    return train, test


def dataset_dir(name: str, data_dir=None, download: bool = True) -> Path | None:
    """The folder of ``name``'s IDX files, found (or downloaded) now; None for the embedded
    ``default``. A parallel launcher calls it once, so that its workers neither search nor
    download, and a missing data set stops the job before any worker starts."""
    if name == "default":
        if data_dir is not None:
            raise DataError("--data-dir is for --dataset fashion-mnist or mnist; the default "
                            "data set is embedded in the package")
        return None
    sources = {"fashion-mnist": FASHION_MNIST, "mnist": MNIST}
    if name not in sources:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return locate(sources[name], data_dir, download)


def load_dataset(name: str = "default", data_dir=None, download: bool = True):
    """The data set ``name`` (``default | fashion-mnist | mnist``), Keras-shaped.

    ``data_dir`` is the folder of the IDX files for ``fashion-mnist`` and ``mnist``; the
    embedded ``default`` takes none.
    """
    directory = dataset_dir(name, data_dir, download)
    return load_default() if directory is None else load_idx_dir(directory)
