"""Data: IDX files, MNIST and Fashion-MNIST, the embedded default subset, and batch loaders.

``load_dataset(name, data_dir)`` is what the CLI calls; ``to_float`` turns uint8 images into
the model's [0, 1] inputs; ``DataLoader.epoch_indices(epoch)`` is the seeded batch order every
rank shares. Every data problem raises a ``DataError`` (a ``ValueError``) with one clear line.

The embedded default data set is a subset of Fashion-MNIST by Zalando Research (MIT licence).
"""

from .datasets import (DATASETS, dataset_dir, load_dataset, load_default, load_fashion_mnist,
                       load_mnist)
from .errors import DataError, IDXError
from .idx import read_idx, write_idx
from .loader import DataLoader, to_float

__all__ = ["DATASETS", "DataError", "DataLoader", "IDXError", "dataset_dir", "load_dataset",
           "load_default", "load_fashion_mnist", "load_mnist", "read_idx", "to_float", "write_idx"]
