"""Make ``fashion_mnist_subset.npz``, the embedded default data set, from the full Fashion-MNIST.

    python -m minilepton.data.make_embedded SRC_DIR [--out PATH]

SRC_DIR holds the four Fashion-MNIST IDX files (for instance Debian's ``dataset-fashion-mnist``
folder). From each split the script draws the same number of images of every class, without
replacement, with ``np.random.default_rng(SEED)``, then shuffles the chosen ones so that the
file is not sorted by class. The output is deterministic: the same source data give the same
bytes (the zip entries carry a fixed timestamp). Besides the arrays, the file records the seed,
the per-class counts, the source, the SHA-256 of each decompressed source file (recompressed
copies hash the same) and the source index of every chosen image (``train_index``,
``test_index``).

Fashion-MNIST is by Zalando Research (Han Xiao, Kashif Rasul, Roland Vollgraf, 2017), released
under the MIT licence: https://github.com/zalandoresearch/fashion-mnist
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from .datasets import EMBEDDED_PATH, NUM_CLASSES, check_split
from .idx import file_bytes, parse_idx
from .sources import SPLIT_STEMS, find_file

SEED = 20170828  # the date Fashion-MNIST was published
PER_CLASS = {"train": 600, "test": 100}
SOURCE = ("Fashion-MNIST, Zalando Research (Xiao, Rasul, Vollgraf 2017), MIT licence, "
          "https://github.com/zalandoresearch/fashion-mnist")
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def stratified_indices(labels, per_class: int, rng) -> np.ndarray:
    """``per_class`` indices of each class 0..9, drawn without replacement, then shuffled."""
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has {len(pool)} images, fewer than {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return rng.permutation(np.concatenate(chosen))


def write_npz(path: Path, arrays: dict) -> None:
    """Like ``np.savez_compressed``, but byte-for-byte reproducible (fixed entry timestamps)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


def make(src_dir, out: Path = EMBEDDED_PATH, seed: int = SEED) -> dict:
    """Build the subset from ``src_dir`` into ``out``; return its metadata."""
    rng = np.random.default_rng(seed)
    arrays, sha256 = {}, {}
    for split, (img_stem, lbl_stem) in SPLIT_STEMS.items():
        data = {}
        for stem in (img_stem, lbl_stem):
            path = find_file(src_dir, stem)
            if path is None:
                raise SystemExit(f"{src_dir}: no {stem}.gz (nor {stem})")
            raw = file_bytes(path)
            sha256[stem] = hashlib.sha256(raw).hexdigest()
            data[stem] = parse_idx(raw, str(path))
        x, y = data[img_stem], data[lbl_stem]
        check_split(x, y, str(src_dir))
        idx = stratified_indices(y, PER_CLASS[split], rng)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x[idx], y[idx]
        arrays[f"{split}_index"] = idx.astype(np.uint16)  # 60,000 < 2**16
    meta = {"seed": seed, "per_class": PER_CLASS, "source": SOURCE, "source_sha256": sha256,
            "script": "python -m minilepton.data.make_embedded SRC_DIR"}
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    write_npz(out, arrays)
    return meta


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src_dir", type=Path, help="folder with the four Fashion-MNIST IDX files")
    parser.add_argument("--out", type=Path, default=EMBEDDED_PATH, help="output .npz")
    args = parser.parse_args(argv)
    make(args.src_dir, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
