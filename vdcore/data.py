"""Datasets as data: ``.npz`` arrays read without pickle, built-in sets from installed packages, MNIST IDX.

Everything is checked against the model before training starts: shapes, finite values, integer labels in
range, sizes declared in file headers (so a small compressed file cannot expand into gigabytes).
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

DEFAULT_MAX_BYTES = 4 << 30
_NPZ_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")
_SPLITS = (("x_val", "y_val"), ("x_test", "y_test"))  # beside the training pair x, y


class DataError(ValueError):
    """A dataset that cannot train the model; the message says what is wrong and how to fix it."""


class DataTooLarge(DataError):
    """A dataset over a size limit; ``limit`` names the argument it passed (``max_bytes`` or ``max_samples``)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


@dataclass(frozen=True)
class Dataset:
    """Training examples and, when there are any, validation and test examples; ``x`` is float32 (or int64 token
    ids for a model that looks them up), ``y`` int64.

    Validation data is what a job measures and chooses on (the threshold an objective picks); test data it never
    chooses on, so its figures are the generalisation a user can expect.
    """

    x: Tensor
    y: Tensor
    x_val: Tensor | None = None
    y_val: Tensor | None = None
    x_test: Tensor | None = None
    y_test: Tensor | None = None
    name: str = "dataset"

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.x, self.y

    @property
    def val(self) -> tuple[Tensor, Tensor] | None:
        return None if self.x_val is None or self.y_val is None else (self.x_val, self.y_val)

    @property
    def test(self) -> tuple[Tensor, Tensor] | None:
        return None if self.x_test is None or self.y_test is None else (self.x_test, self.y_test)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        labels = [y for y in (self.y, self.y_val, self.y_test) if y is not None]
        return int(torch.cat(labels).max()) + 1


def _npz_members(
    path: Path, max_bytes: int, max_samples: int | None = None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of an npz's arrays, read from their headers without decompressing the data.

    ``DataTooLarge`` if the arrays would take more than ``max_bytes`` or hold more than ``max_samples`` examples
    (``x``, ``x_val`` and ``x_test`` together).
    """
    members = {}
    stored = {}  # bytes after each header, by the zip's directory: zipfile never inflates a member past them
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    stored[name] = info.file_size - f.tell()
                members[name] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
        raise DataError(
            f"not a readable .npz file ({error}); save it with numpy.savez or numpy.savez_compressed"
        ) from None
    declared = 0
    for name, (shape, dtype) in members.items():
        if dtype.hasobject:
            raise DataError(
                f"array '{name}' holds Python objects (it would need pickle, which is refused); "
                "save plain numeric arrays"
            )
        if any(size < 0 for size in shape):  # a negative size would also offset the others in the sums below
            raise DataError(f"array '{name}' declares shape {list(shape)}; the file is damaged, save it again")
        declared += math.prod(shape) * dtype.itemsize
    if declared > max_bytes:
        raise DataTooLarge(
            f"the arrays would take {declared:,} bytes once loaded, more than the {max_bytes:,} allowed", "max_bytes"
        )
    samples = sum(members[key][0][0] for key in ("x", "x_val", "x_test") if key in members and members[key][0])
    if max_samples is not None and samples > max_samples:
        raise DataTooLarge(
            f"the dataset holds {samples:,} examples (x, x_val and x_test), more than the {max_samples:,} allowed",
            "max_samples",
        )
    for name, (shape, dtype) in members.items():
        if math.prod(shape) * dtype.itemsize != stored[name]:
            raise DataError(
                f"array '{name}' declares shape {list(shape)} of {dtype} ({math.prod(shape) * dtype.itemsize:,} "
                f"bytes) but its file holds {stored[name]:,} bytes of data; the file is damaged, save it again"
            )
    return members


def _as_examples(x: np.ndarray, part: str, input_shape: Sequence[int], vocabulary: int | None = None) -> Tensor:
    """Examples as float32 shaped ``(N, *input_shape)`` (int64 ids below ``vocabulary`` when given); a flat
    ``(N, features)`` array is reshaped."""
    if x.dtype.kind not in "iuf":  # not complex, bool, timedelta (which numpy counts as an integer) or text
        raise DataError(f"'{part}' must hold real numbers, it holds {x.dtype}")
    if vocabulary is not None and x.dtype.kind not in "iu":
        raise DataError(f"'{part}' holds {x.dtype} values, but the model looks up token ids: give integers "
                        f"in 0..{vocabulary - 1}")
    shape = tuple(input_shape)
    if x.ndim < 1 or x.shape[1:] != shape:
        if x.ndim == 2 and x.shape[1] == math.prod(shape):
            x = x.reshape(len(x), *shape)
        else:
            raise DataError(
                f"'{part}' has shape {list(x.shape)}, but the model takes examples of shape {list(shape)}: "
                f"give an array of shape [N, {', '.join(map(str, shape))}] (or [N, {math.prod(shape)}])"
            )
    if vocabulary is not None:
        if x.size and (x.min() < 0 or x.max() >= vocabulary):
            raise DataError(
                f"'{part}' holds token ids from {x.min()} to {x.max()}, but the model's embedding has {vocabulary} "
                f"rows: ids must lie in 0..{vocabulary - 1} (map unknown words to one id, or enlarge the table)"
            )
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64))
    with np.errstate(over="ignore"):  # values beyond float32 become inf, reported just below
        values = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        raise DataError(f"'{part}' holds {int((~finite).sum())} NaN or infinite value(s); clean or drop them")
    return values


def _as_labels(y: np.ndarray, part: str, count: int, num_classes: int) -> Tensor:
    """Labels as int64 in ``[0, num_classes)``, one per example."""
    if y.ndim != 1 or len(y) != count:
        raise DataError(
            f"'{part}' must be a 1-d array of {count} class indices (one per example), got shape {list(y.shape)}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise DataError(f"'{part}' must hold integer class indices, it holds non-integer values")
    elif y.dtype.kind not in "iu":  # timedelta64 is a numpy integer, but no class index
        raise DataError(f"'{part}' must hold integer class indices, it holds {y.dtype}")
    if count and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(
            f"'{part}' holds labels from {y.min()} to {y.max()}, but the model has {num_classes} classes: "
            f"labels must lie in 0..{num_classes - 1}"
        )
    return torch.from_numpy(y.astype(np.int64))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_model(input_shape: object, num_classes: object) -> None:
    """The model's side as ``load_npz``'s caller gave it (a job's spec, not checked yet); None: from the data."""
    if input_shape is not None and (
        not isinstance(input_shape, Sequence) or isinstance(input_shape, str) or not all(map(_is_count, input_shape))
    ):
        raise DataError(
            f"input_shape must be a list of positive integers ([features] or [C, H, W]), got {input_shape!r}"
        )
    if num_classes is not None and not _is_count(num_classes):
        raise DataError(f"num_classes must be an integer (the number of classes), got {num_classes!r}")


def from_arrays(
    arrays: dict[str, np.ndarray],
    input_shape: Sequence[int],
    num_classes: int,
    name: str = "dataset",
    vocabulary: int | None = None,
) -> Dataset:
    """A checked dataset from ``x``, ``y`` and optional ``x_val``, ``y_val`` and ``x_test``, ``y_test`` arrays;
    with ``vocabulary``, the examples are token ids below it."""
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"the dataset needs an array named '{key}'; it has {sorted(arrays)}")
    for x_key, y_key in _SPLITS:
        if (x_key in arrays) != (y_key in arrays):
            raise DataError(f"give both '{x_key}' and '{y_key}', or neither")
    x = _as_examples(arrays["x"], "x", input_shape, vocabulary)
    if len(x) == 0:
        raise DataError("'x' holds no examples")
    parts = {"x": x, "y": _as_labels(arrays["y"], "y", len(x), num_classes)}
    for x_key, y_key in _SPLITS:
        if x_key in arrays:
            parts[x_key] = _as_examples(arrays[x_key], x_key, input_shape, vocabulary)
            parts[y_key] = _as_labels(arrays[y_key], y_key, len(parts[x_key]), num_classes)
    return Dataset(**parts, name=name)


def load_npz(
    path: str | os.PathLike[str],
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_samples: int | None = None,
    vocabulary: int | None = None,
) -> Dataset:
    """Read an ``.npz`` with arrays ``x``, ``y`` (and optionally ``x_val``, ``y_val``, ``x_test``, ``y_test``),
    never unpickling.

    ``input_shape`` and ``num_classes`` are the model's; left out, they are taken from the data (the shape of
    an example of ``x``, the largest label + 1). ``vocabulary``: the model looks up token ids, so ``x`` must
    hold integers below it (kept as int64); otherwise ``x`` becomes float32. ``max_bytes`` (the arrays' size
    once decompressed) and ``max_samples`` (examples in all three splits) are checked from the arrays'
    headers before any data is read; ``DataTooLarge`` names the one that was passed.
    """
    path = Path(path)
    _check_model(input_shape, num_classes)
    members = _npz_members(path, max_bytes, max_samples)
    unknown = sorted(set(members) - set(_NPZ_KEYS))
    if unknown:
        raise DataError(f"unexpected array(s) {unknown} in the .npz; it may hold only {list(_NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in members}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"the .npz could not be read ({error}); save it again with numpy.savez") from None
    if input_shape is None:
        input_shape = arrays["x"].shape[1:] if "x" in arrays else ()
    if num_classes is None:
        num_classes = _label_count(arrays)
    return from_arrays(arrays, input_shape, num_classes, name=path.name, vocabulary=vocabulary)


def _label_count(arrays: dict[str, np.ndarray]) -> int:
    """Classes implied by the labels (largest + 1), for a model whose class count is not given."""
    labels = [arrays[k] for k in ("y", "y_val", "y_test") if k in arrays and arrays[k].size]
    if not labels or not all(y.dtype.kind in "iuf" for y in labels):
        return 0  # from_arrays then explains what is wrong with y
    top = max(float(np.nanmax(y)) for y in labels)
    return int(top) + 1 if np.isfinite(top) and top >= 1 else 2


def split_validation(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Hold out ``fraction`` of the training examples for validation, unless the dataset has its own."""
    if dataset.val is not None or fraction == 0:
        return dataset
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must lie in [0, 1), got {fraction}")
    count = len(dataset.x)
    held = max(1, round(count * fraction))
    if held >= count:
        raise DataError(f"{count} examples are too few to hold out {fraction:.0%} for validation")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    val, train = order[:held], order[held:]
    return replace(dataset, x=dataset.x[train], y=dataset.y[train], x_val=dataset.x[val], y_val=dataset.y[val])


def load_digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped inside the package), scaled to [0, 1].

    Fixed splits, so runs compare across machines: 1200 images to train on, the next 300 to validate on, the last
    297 to test on.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("the built-in 'digits' dataset needs scikit-learn: pip install 'vdcompress[data]'") from None
    bunch = sklearn_digits()
    x = torch.from_numpy((bunch.data / 16.0).astype(np.float32)).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    return Dataset(x[:1200], y[:1200], x[1200:1500], y[1200:1500], x[1500:], y[1500:], name="digits")


BUILTIN_DATASETS = {"digits": load_digits}


def load_builtin(name: str) -> Dataset:
    """A dataset that ships inside an installed package, by name."""
    if name not in BUILTIN_DATASETS:
        raise DataError(f"unknown built-in dataset {name!r}; built-in datasets are {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]()


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One IDX file (optionally gzipped) of unsigned bytes: big-endian magic, dimensions, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(f"{path.name} is not an IDX file with magic number {magic}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise DataError(f"{path.name} declares shape {dims} but holds {len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.exists():
            return candidate
    raise DataError(f"{directory} has no {stem} or {stem}.gz")


def load_idx_dir(directory: str | os.PathLike[str]) -> Dataset:
    """MNIST-format IDX files from a directory (``train-images-idx3-ubyte[.gz]`` and so on).

    Images are scaled to [0, 1] and shaped ``(N, 1, H, W)``; the ``t10k`` files become the test split, and a job
    holds its validation data out of the training files.
    """
    directory = Path(directory)
    parts = []
    for prefix in ("train", "t10k"):
        images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"), 2051)
        labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"), 2049)
        if len(images) != len(labels):
            raise DataError(f"{prefix}: {len(images)} images but {len(labels)} labels")
        parts += [
            torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    x, y, x_test, y_test = parts
    return Dataset(x, y, x_test=x_test, y_test=y_test, name=directory.name)
