"""Datasets: npz without pickle, built-in digits, MNIST IDX; every bad file refused with a clear message."""

import gzip
import struct
import zipfile

import numpy as np
import pytest
import torch

from vdcore.data import DataError, load_builtin, load_idx_dir, load_npz, split_validation

SHAPE = (1, 4, 4)


def write_npz(path, **arrays):
    np.savez_compressed(path, **arrays)
    return path


def good_arrays(n=20):
    rng = np.random.default_rng(0)
    return {"x": rng.random((n, *SHAPE), dtype=np.float32), "y": rng.integers(0, 3, n)}


def test_npz_round_trip_and_flat_examples_are_reshaped(tmp_path):
    arrays = good_arrays()
    arrays["x_val"] = arrays["x"][:5].reshape(5, 16)  # flat examples are accepted
    arrays["y_val"] = arrays["y"][:5].astype(np.float32)  # integral floats are accepted
    data = load_npz(write_npz(tmp_path / "d.npz", **arrays), SHAPE, 3)
    assert data.x.shape == (20, *SHAPE) and data.x.dtype == torch.float32
    assert data.x_val.shape == (5, *SHAPE) and data.y_val.dtype == torch.int64
    assert torch.equal(data.x_val, data.x[:5])
    assert data.test is None


def test_npz_carries_a_test_split_that_counts_toward_the_classes_and_the_limit(tmp_path):
    arrays = good_arrays() | {"x_test": np.zeros((4, *SHAPE), np.float32), "y_test": np.array([0, 1, 2, 4])}
    data = load_npz(write_npz(tmp_path / "d.npz", **arrays))
    assert data.x_test.shape == (4, *SHAPE) and data.num_classes == 5 and data.val is None
    assert split_validation(data, 0.25).x_test is data.x_test  # held-out validation comes from x, the test stays
    with pytest.raises(DataError, match=r"24 examples \(x, x_val and x_test\), more than the 23"):
        load_npz(tmp_path / "d.npz", max_samples=23)


def test_npz_infers_shape_and_classes_when_not_given(tmp_path):
    data = load_npz(write_npz(tmp_path / "d.npz", **good_arrays()))
    assert data.input_shape == SHAPE and data.num_classes == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": np.array([{"a": 1}] * 20, dtype=object)}, "Python objects"),
        ({"x": np.full((20, *SHAPE), np.nan, dtype=np.float32)}, "NaN or infinite"),
        ({"x": np.zeros((20, 2, 4, 4), dtype=np.float32)}, r"shape \[20, 2, 4, 4\].*\[1, 4, 4\]"),
        ({"x": np.array(["a"] * 20)}, "real numbers"),
        ({"y": np.full(20, 3)}, r"labels from 3 to 3.*0\.\.2"),
        ({"y": np.full(20, -1)}, "labels from -1"),
        ({"y": np.full(20, 0.5)}, "integer class indices"),
        ({"y": np.zeros(19, dtype=int)}, "1-d array of 20"),
        ({"y": np.zeros((20, 2), dtype=int)}, "1-d array of 20"),
        ({"x_val": np.zeros((2, *SHAPE), dtype=np.float32)}, "both 'x_val' and 'y_val'"),
        ({"y_test": np.zeros(2, dtype=int)}, "both 'x_test' and 'y_test'"),
        ({"x_test": np.zeros((2, 9), np.float32), "y_test": np.zeros(2, int)}, r"'x_test' has shape \[2, 9\]"),
        ({"x_test": np.zeros((2, *SHAPE), np.float32), "y_test": np.zeros(3, int)}, "'y_test' must be a 1-d array"),
        ({"z": np.zeros(3)}, r"unexpected array\(s\) \['z'\]"),
        ({"x": np.zeros((0, *SHAPE), dtype=np.float32), "y": np.zeros(0, dtype=int)}, "no examples"),
    ],
)
def test_bad_npz_contents_are_refused(tmp_path, change, message):
    arrays = good_arrays() | change
    with pytest.raises(DataError, match=message):
        load_npz(write_npz(tmp_path / "d.npz", **arrays), SHAPE, 3)


def test_missing_arrays_are_named(tmp_path):
    with pytest.raises(DataError, match="needs an array named 'y'"):
        load_npz(write_npz(tmp_path / "d.npz", x=good_arrays()["x"]), SHAPE, 3)


def test_truncated_and_garbage_files_are_refused(tmp_path):
    whole = write_npz(tmp_path / "d.npz", **good_arrays()).read_bytes()
    for name, content in [("cut.npz", whole[: len(whole) // 2]), ("junk.npz", b"not a zip at all")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DataError, match="npz"):
            load_npz(path, SHAPE, 3)


def test_declared_size_is_checked_before_decompressing(tmp_path):
    """A few kilobytes that would expand to 4 GB are refused from their headers alone."""
    path = tmp_path / "bomb.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 1000)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 100_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(DataError, match="4,000,000,000 bytes"):
        load_npz(path, SHAPE, 3, max_bytes=1 << 30)


def test_split_validation_is_seeded_and_respects_an_existing_split():
    data = load_builtin("digits")
    assert split_validation(data, 0.2) is data  # digits has its own validation set
    train_only = type(data)(data.x, data.y)
    a, b = split_validation(train_only, 0.2, seed=1), split_validation(train_only, 0.2, seed=1)
    assert len(a.x_val) == 240 and len(a.x) == 960
    assert torch.equal(a.y_val, b.y_val)
    with pytest.raises(DataError, match="fraction"):
        split_validation(train_only, 1.5)


def test_builtin_digits():
    data = load_builtin("digits")
    assert data.x.shape == (1200, 1, 8, 8) and data.x_val.shape == (300, 1, 8, 8)
    assert data.x_test.shape == (297, 1, 8, 8)
    assert float(data.x.min()) >= 0 and float(data.x.max()) <= 1
    assert data.num_classes == 10
    with pytest.raises(DataError, match="built-in datasets are"):
        load_builtin("imagenet")


def _write_idx(path, magic, array):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_directory(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", 2051, rng.integers(0, 256, (n, 6, 6)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", 2049, rng.integers(0, 10, n))
    data = load_idx_dir(tmp_path)
    assert data.x.shape == (12, 1, 6, 6) and data.x_test.shape == (5, 1, 6, 6) and data.val is None
    assert float(data.x.max()) <= 1.0

    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + b"\0" * 8))
    with pytest.raises(DataError, match="magic number 2049"):
        load_idx_dir(tmp_path)
    with pytest.raises(DataError, match="has no train-images"):
        load_idx_dir(tmp_path / "missing")
