"""Turn uint8 images into float batches: ``to_float`` and the seeded ``DataLoader``.

``to_float`` maps raw pixels to the model's input, as the article's Keras example does with
``x / 255``: an image batch of shape (N, 28, 28) becomes (N, 784) in [0, 1].

``DataLoader.epoch_indices(epoch)`` is a contract that data parallelism relies on. For a given
``(seed, epoch)`` it returns the same list of *global* batches (index arrays into the data set) in
every process, on every run, with no state carried from earlier epochs:

    order   = default_rng([seed, epoch]).permutation(N)     (arange(N) when shuffle=False)
    batches = order[0:B], order[B:2B], ...                  (the short tail dropped if drop_last)

So a job resumed at epoch e draws exactly the batches it would have drawn, and P data-parallel
ranks that each call ``epoch_indices(e)`` and keep their own shard of every batch together cover
each global batch exactly once. Changing this function changes every recorded run: don't.
"""

from __future__ import annotations

import numpy as np

from .errors import DataError

PIXEL_MAX = 255


def to_float(x, dtype=np.float32) -> np.ndarray:
    """Flatten uint8 images (N, ...) to (N, features) of ``dtype``, scaled to [0, 1] by /255.

    The cast and the division both happen in ``dtype``: no float64 array is made for float32.
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DataError(f"to_float needs a floating dtype, not {dtype}")
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise DataError(f"to_float expects raw uint8 pixels (0..255), got dtype {x.dtype}")
    if x.ndim < 1:
        raise DataError("to_float expects a batch of images (N, ...), got a scalar")
    out = x.reshape(len(x), -1).astype(dtype)
    out /= dtype.type(PIXEL_MAX)
    return out


def _check_non_negative_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise DataError(f"{what} must be a non-negative integer, not {value!r}")
    return int(value)


class DataLoader:
    """Batches ``(x[idx], y[idx])`` in an order that is a pure function of ``(seed, epoch)``.

    ``set_epoch(e)`` chooses the epoch that ``iter`` walks (iterating twice without it repeats
    the same order, as in a resumed run); ``len`` is the number of batches per epoch.
    """

    def __init__(self, x, y, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size <= 0:
            raise DataError(f"batch_size must be a positive integer, not {batch_size!r}")
        if len(x) != len(y):
            raise DataError(f"x and y differ in length: {len(x)} samples vs {len(y)} labels")
        self.x, self.y = x, y
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = _check_non_negative_int(seed, "seed")
        self.drop_last = bool(drop_last)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.x)

    def __len__(self) -> int:
        full, tail = divmod(self.num_samples, self.batch_size)
        return full + (1 if tail and not self.drop_last else 0)

    def epoch_indices(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` as int64 index arrays (see the module docstring)."""
        epoch = _check_non_negative_int(epoch, "epoch")
        n = self.num_samples
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        order = order.astype(np.int64, copy=False)
        stop = n - n % self.batch_size if self.drop_last else n
        return [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration walk ``epoch``'s batches."""
        self.epoch = _check_non_negative_int(epoch, "epoch")

    def __iter__(self):
        for idx in self.epoch_indices(self.epoch):
            yield self.x[idx], self.y[idx]
