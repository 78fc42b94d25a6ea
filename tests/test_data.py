"""Tests of minilepton.data: IDX files, finding and (offline) downloading data, loaders."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import tempfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minilepton import data
from minilepton.data import datasets, download, locate, make_embedded, sources
from minilepton.data.errors import DataError, IDXError
from minilepton.data.idx import idx_bytes, parse_idx, read_idx, write_idx
from minilepton.data.loader import DataLoader, to_float

DEBIAN_DIR = Path(sources.FASHION_MNIST.system_dirs[0])
HAVE_DEBIAN = all((DEBIAN_DIR / name).is_file() for name in sources.FILE_NAMES)
IDX_DTYPES = ["u1", "i1", ">i2", "<i2", ">i4", "<i4", ">f4", "<f4", ">f8", "<f8"]
NO_SYSTEM_DIR = dataclasses.replace(sources.FASHION_MNIST, system_dirs=())  # cache only


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download fails the test (tests that want a download install their own)."""
    def refuse(url, timeout_s):
        raise AssertionError(f"test tried to open {url}")
    monkeypatch.setattr(download, "_open_url", refuse)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No data-set variables set, and the cache under tmp_path/cache."""
    for var in ("MINILEPTON_DATA", "MINILEPTON_FASHION_MNIST", "MINILEPTON_MNIST"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def write_fake_dataset(directory, marker: int = 7, compress: bool = True) -> Path:
    """Four small IDX files (20 train, 10 test) whose pixels all equal ``marker``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for split, n in (("train", 20), ("t10k", 10)):
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}",
                  np.full((n, 28, 28), marker, np.uint8))
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}",
                  (np.arange(n) % 10).astype(np.uint8))
    return directory


def marker_of(loaded) -> int:
    return int(loaded[0][0][0, 0, 0])  # the first training pixel


# ---------------------------------------------------------------------------------------- IDX
@settings(max_examples=60, deadline=None)
@given(array=st.sampled_from(IDX_DTYPES).flatmap(lambda dt: hnp.arrays(
           np.dtype(dt), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))),
       compress=st.booleans())
def test_idx_round_trip(array, compress):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("a.idx.gz" if compress else "a.idx")
        write_idx(path, array)
        back = read_idx(path)
    assert back.shape == array.shape
    assert back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(3, 4)
    write_idx(tmp_path / "looks_raw", array, compress=True)
    write_idx(tmp_path / "looks_gz.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks_raw"), array)
    np.testing.assert_array_equal(read_idx(tmp_path / "looks_gz.gz"), array)
    with pytest.raises(IDXError, match="uint64"):
        write_idx(tmp_path / "a.idx", np.zeros(3, np.uint64))


def _read_bytes_as_file(raw: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.idx"
        path.write_bytes(raw)
        return read_idx(path)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_random_bytes_only_raise_idx_error(raw):
    try:
        parse_idx(raw)
    except IDXError as exc:
        assert "\n" not in str(exc)


_SAMPLE = np.arange(2 * 3 * 4, dtype=">i2").reshape(2, 3, 4)
_SAMPLE_RAW = idx_bytes(_SAMPLE)
_SAMPLE_GZ = gzip.compress(_SAMPLE_RAW, mtime=0)


@settings(max_examples=60, deadline=None)
@given(gz=st.booleans(), data_=st.data())
def test_any_truncation_raises_idx_error(gz, data_):
    whole = _SAMPLE_GZ if gz else _SAMPLE_RAW
    cut = data_.draw(st.integers(0, len(whole) - 1))
    with pytest.raises(IDXError, match="f.idx"):
        _read_bytes_as_file(whole[:cut])


@settings(max_examples=80, deadline=None)
@given(pos=st.integers(0, 4 + 4 * 3 - 1), xor=st.integers(1, 255))
def test_flipped_header_byte_gives_array_or_idx_error(pos, xor):
    raw = bytearray(_SAMPLE_RAW)
    raw[pos] ^= xor
    try:
        back = parse_idx(bytes(raw))
    except IDXError:
        return
    # A flip may give another valid header (say int16 -> float32 with a halved dimension);
    # it must then still describe the payload exactly, and never touch the 0000 magic.
    assert pos >= 2 and back.nbytes == len(_SAMPLE_RAW) - (4 + 4 * back.ndim)


@settings(max_examples=80, deadline=None)
@given(pos=st.integers(10, len(_SAMPLE_GZ) - 1), xor=st.integers(1, 255))
def test_corrupt_gzip_body_never_gives_wrong_data(pos, xor):
    raw = bytearray(_SAMPLE_GZ)
    raw[pos] ^= xor
    try:
        back = _read_bytes_as_file(bytes(raw))
    except IDXError as exc:
        assert "f.idx" in str(exc)
        return
    # Only a flip in the unused padding bits of the last deflate byte can go unnoticed; the
    # CRC-32 catches every change to the decompressed bytes.
    assert pos < len(_SAMPLE_GZ) - 8
    np.testing.assert_array_equal(back, _SAMPLE)


@pytest.mark.parametrize("pos", range(-8, 0))
def test_corrupt_gzip_trailer_raises_idx_error(pos):
    raw = bytearray(_SAMPLE_GZ)
    raw[pos] ^= 0x01
    with pytest.raises(IDXError, match="corrupt gzip stream"):
        _read_bytes_as_file(bytes(raw))


def test_idx_error_is_a_data_error_and_value_error():
    assert issubclass(IDXError, DataError) and issubclass(DataError, ValueError)
    with pytest.raises(IDXError, match="cannot read"):
        read_idx("no/such/file.idx")
    with pytest.raises(IDXError, match="trailing bytes"):
        parse_idx(_SAMPLE_RAW + b"\x00")


# ---------------------------------------------------------------------------- data set checks
@pytest.mark.parametrize(("name", "labels", "error"), [
    ("t10k-labels-idx1-ubyte.gz", np.full(10, 10, np.uint8), "label 10 outside 0..9"),
    ("train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8), "20 images but 19 labels")])
def test_inconsistent_labels_rejected(tmp_path, name, labels, error):
    d = write_fake_dataset(tmp_path / "d")
    write_idx(d / name, labels)
    with pytest.raises(DataError, match=error):
        data.load_mnist(d)


def test_load_dataset_names(clean_env):
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*default, fashion-mnist, mnist"):
        data.load_dataset("cifar")
    with pytest.raises(DataError, match="embedded"):
        data.load_dataset("default", data_dir="somewhere")
    d = write_fake_dataset(clean_env / "m", marker=9, compress=False)  # uncompressed names too
    (x_train, y_train), (x_test, _) = data.load_dataset("mnist", d)
    assert x_train.shape == (20, 28, 28) and x_test.shape == (10, 28, 28)
    assert x_train.dtype == y_train.dtype == np.uint8 and x_train[0, 0, 0] == 9
    assert marker_of(data.load_dataset("fashion-mnist", d)) == 9


# ------------------------------------------------------------------------------ locate order
def test_locate_order(clean_env, monkeypatch):
    tmp = clean_env
    source = dataclasses.replace(sources.FASHION_MNIST, system_dirs=(str(tmp / "system"),))
    explicit = write_fake_dataset(tmp / "explicit", marker=1)
    own_var = write_fake_dataset(tmp / "own", marker=2)
    root = tmp / "root"
    write_fake_dataset(root / "fashion-mnist", marker=3)
    write_fake_dataset(tmp / "system", marker=4)
    write_fake_dataset(tmp / "cache" / "minilepton" / "fashion-mnist", marker=5)
    monkeypatch.setenv("MINILEPTON_FASHION_MNIST", str(own_var))
    monkeypatch.setenv("MINILEPTON_DATA", str(root))

    def found():
        return marker_of(datasets.load_idx_dir(locate.locate(source, None, download=False)))

    assert marker_of(datasets.load_idx_dir(locate.locate(source, explicit))) == 1
    assert found() == 2
    monkeypatch.delenv("MINILEPTON_FASHION_MNIST")
    assert found() == 3
    monkeypatch.setenv("MINILEPTON_DATA", str(tmp / "empty_root"))  # no fashion-mnist/ in it
    assert found() == 4
    monkeypatch.delenv("MINILEPTON_DATA")
    source = dataclasses.replace(source, system_dirs=())
    assert found() == 5


def test_explicit_or_own_variable_must_be_complete(clean_env, monkeypatch):
    d = write_fake_dataset(clean_env / "d")
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="lacks t10k-labels-idx1-ubyte.gz"):
        data.load_fashion_mnist(d)
    with pytest.raises(DataError, match="not a folder"):
        data.load_fashion_mnist(clean_env / "nowhere")
    monkeypatch.setenv("MINILEPTON_MNIST", str(d))
    with pytest.raises(DataError, match="MINILEPTON_MNIST"):
        data.load_mnist()


def test_cache_honours_xdg_and_ignores_relative(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert sources.cache_dir(sources.MNIST) == tmp_path / "minilepton" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert sources.cache_dir(sources.MNIST) == Path.home() / ".cache" / "minilepton" / "mnist"


# ----------------------------------------------------------------------------------- download
def test_offline_gives_clear_error(clean_env, monkeypatch):
    source, opened = NO_SYSTEM_DIR, []
    with pytest.raises(DataError, match="download=False.*MINILEPTON_FASHION_MNIST"):
        locate.locate(source, download=False)  # never opens a URL (the fixture would fail)

    def offline(url, timeout_s):
        opened.append(url)
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(download, "_open_url", offline)
    with pytest.raises(DataError) as info:
        locate.locate(source)
    message = str(info.value)
    for needed in ("could not be downloaded", "name resolution", "MINILEPTON_FASHION_MNIST",
                   "apt-get install dataset-fashion-mnist", str(sources.cache_dir(source))):
        assert needed in message and "\n" not in message
    assert opened == [m + "train-images-idx3-ubyte.gz" for m in source.mirrors]
    assert list(sources.cache_dir(source).iterdir()) == []


def _served_files(tmp_path):
    """The bytes of a small fake data set, by file name, and their MD5s."""
    d = write_fake_dataset(tmp_path / "served", marker=6)
    served = {name: (d / name).read_bytes() for name in sources.FILE_NAMES}
    return served, {name: hashlib.md5(b).hexdigest() for name, b in served.items()}


def test_download_falls_back_to_next_mirror_and_loads(clean_env, monkeypatch):
    served, md5 = _served_files(clean_env)
    source = dataclasses.replace(NO_SYSTEM_DIR, md5=md5,
                                 mirrors=("http://down.example/", "http://up.example/"))

    def opener(url, timeout_s):
        if url.startswith("http://down.example/"):
            raise urllib.error.URLError("connection refused")
        return io.BytesIO(served[url.rsplit("/", 1)[1]])
    monkeypatch.setattr(download, "_open_url", opener)
    assert marker_of(datasets.load_idx_dir(locate.locate(source))) == 6
    assert sorted(p.name for p in sources.cache_dir(source).iterdir()) == sorted(sources.FILE_NAMES)


def test_md5_mismatch_rejected_without_partial_file(clean_env, monkeypatch):
    served, md5 = _served_files(clean_env)
    md5["t10k-images-idx3-ubyte.gz"] = "0" * 32
    source = dataclasses.replace(NO_SYSTEM_DIR, md5=md5,
                                 mirrors=("http://only.example/",))
    monkeypatch.setattr(download, "_open_url",
                        lambda url, timeout_s: io.BytesIO(served[url.rsplit("/", 1)[1]]))
    with pytest.raises(DataError, match="MD5 .* differs from the published 0{32}"):
        locate.locate(source)
    left = sorted(p.name for p in sources.cache_dir(source).iterdir())  # no .part file either
    assert left == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]


def test_interrupted_download_leaves_no_file(clean_env, monkeypatch):
    class Broken(io.BytesIO):
        def read(self, n=-1):
            raise TimeoutError("timed out")
    source = dataclasses.replace(NO_SYSTEM_DIR, mirrors=("http://slow.example/",))
    monkeypatch.setattr(download, "_open_url", lambda url, timeout_s: Broken(b"x"))
    with pytest.raises(DataError, match="timed out"):
        locate.locate(source)
    assert list(sources.cache_dir(source).iterdir()) == []


@pytest.mark.parametrize("source", sources.SOURCES.values(), ids=sources.SOURCES.keys())
def test_published_md5s_are_well_formed(source):
    assert sorted(source.md5) == sorted(sources.FILE_NAMES)
    assert all(len(h) == 32 and int(h, 16) >= 0 for h in source.md5.values())


# ------------------------------------------------------------------------------ the data sets
def test_embedded_default():
    (x_train, y_train), (x_test, y_test) = data.load_default()
    assert x_train.shape == (6000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == x_test.dtype == y_train.dtype == y_test.dtype == np.uint8
    assert np.bincount(y_train, minlength=10).tolist() == [600] * 10
    assert np.bincount(y_test, minlength=10).tolist() == [100] * 10
    assert x_train.max() == 255 and x_train.std() > 50  # real images, not blanks
    assert not np.array_equal(y_train[:10], np.sort(y_train[:10]))  # not sorted by class
    assert os.path.getsize(datasets.EMBEDDED_PATH) < 4_000_000


@pytest.mark.skipif(not HAVE_DEBIAN, reason="full Fashion-MNIST (dataset-fashion-mnist) absent")
def test_full_fashion_mnist_from_debian_folder():
    (x_train, y_train), (x_test, y_test) = data.load_fashion_mnist(DEBIAN_DIR)
    assert x_train.shape == (60000, 28, 28) and y_train.shape == (60000,)
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    assert np.bincount(y_test).tolist() == [1000] * 10


@pytest.mark.skipif(not HAVE_DEBIAN, reason="full Fashion-MNIST (dataset-fashion-mnist) absent")
def test_embedded_file_is_reproduced_by_its_script(tmp_path):
    out = tmp_path / "subset.npz"
    make_embedded.make(DEBIAN_DIR, out)
    assert out.read_bytes() == datasets.EMBEDDED_PATH.read_bytes()
    (x_full, _), _ = data.load_fashion_mnist(DEBIAN_DIR)
    with np.load(out) as npz:
        np.testing.assert_array_equal(x_full[npz["train_index"]], npz["x_train"])


# ----------------------------------------------------------------------------------- loaders
def test_to_float_matches_keras_scaling_exactly():
    pixels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)
    for dtype in (np.float32, np.float64):
        out = to_float(pixels, dtype)
        assert out.dtype == dtype and out.shape == (4, 64)
        np.testing.assert_array_equal(out, (pixels.reshape(4, 64) / 255.0).astype(dtype))
    assert to_float(pixels).dtype == np.float32
    with pytest.raises(DataError, match="uint8"):
        to_float(pixels / 255.0)
    with pytest.raises(DataError, match="floating"):
        to_float(pixels, np.int32)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), batch_size=st.integers(1, 64), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 1000), drop_last=st.booleans())
def test_epoch_is_a_permutation_in_batches(n, batch_size, seed, epoch, drop_last):
    loader = DataLoader(np.zeros((n, 2)), np.zeros(n), batch_size, seed=seed, drop_last=drop_last)
    batches = loader.epoch_indices(epoch)
    assert len(batches) == len(loader)
    assert all(len(b) == batch_size for b in batches[:-1])
    seen = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    assert len(seen) == (n - n % batch_size if drop_last else n)
    assert not drop_last or all(len(b) == batch_size for b in batches)
    assert len(np.unique(seen)) == len(seen) and (seen < max(n, 1)).all()
    expected = np.random.default_rng([seed, epoch]).permutation(n)[:len(seen)]
    np.testing.assert_array_equal(seen, expected)  # the documented contract


def test_loader_determinism_and_epochs():
    x, y = np.arange(100).reshape(50, 2), np.arange(50)

    def order(epoch, **kw):
        return np.concatenate(DataLoader(x, y, 8, **kw).epoch_indices(epoch))
    np.testing.assert_array_equal(order(3, seed=5), order(3, seed=5))  # two instances agree
    assert not np.array_equal(order(0, seed=5), order(1, seed=5))      # epochs differ
    assert not np.array_equal(order(0, seed=5), order(0, seed=6))      # seeds differ
    np.testing.assert_array_equal(order(4, shuffle=False), np.arange(50))


def test_loader_iterates_the_chosen_epoch():
    x, y = np.arange(20).reshape(10, 2), np.arange(10) * 10
    loader = DataLoader(x, y, 4, seed=1)
    loader.set_epoch(2)
    got = list(loader)
    assert len(got) == len(loader) == 3
    for (xb, yb), idx in zip(got, loader.epoch_indices(2), strict=True):
        np.testing.assert_array_equal(xb, x[idx])
        np.testing.assert_array_equal(yb, y[idx])


def test_loader_rejects_bad_arguments():
    x, y = np.zeros((5, 2)), np.zeros(5)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="batch_size"):
            DataLoader(x, y, bad)
    with pytest.raises(DataError, match="5 samples vs 4 labels"):
        DataLoader(x, y[:4], 2)
    with pytest.raises(DataError, match="seed"):
        DataLoader(x, y, 2, seed=-1)
    with pytest.raises(DataError, match="epoch"):
        DataLoader(x, y, 2).epoch_indices(-1)
