"""Readers for the original MNIST (idx) and CIFAR-10/100 (python pickle) files.

All readers return uint8 images ``[N, H, W, C]`` and int32 labels ``[N]``.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import DataError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "x_train": ("train", "images", 3),
    "y_train": ("train", "labels", 1),
    "x_test": ("t10k", "images", 3),
    "y_test": ("t10k", "labels", 1),
}
CIFAR_LAYOUT = {
    # name: (sub-folder of the original archive, train files, test file, label key)
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "labels",
    ),
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels"),
}
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an idx file (gzip-compressed or raw, detected from the content).

    Args:
        path: File to read.

    Returns:
        The array with the shape and dtype stored in the header (native byte order).

    Raises:
        DataError: If the file is unreadable, has a bad magic number, or is truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read idx file {path}: {e}") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"bad idx magic number in {path}: {raw[:4].hex()}; re-download the file")
    ndim, dtype = raw[3], np.dtype(_IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], ">u4")) if len(raw) >= header else ()
    if len(raw) < header or len(raw) != header + math.prod(dims) * dtype.itemsize:
        raise DataError(f"truncated or corrupt idx file {path}: size does not match its header")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def mnist_file_names(prefix: str, kind: str, ndim: int) -> list[str]:
    """Accepted names of one MNIST file, e.g. ``train-images-idx3-ubyte[.gz]``."""
    bases = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    return [b + ext for b in bases for ext in (".gz", "")]


def find_mnist(dirs: list[Path]) -> dict[str, Path] | None:
    """Returns the four MNIST files in the first of ``dirs`` that has all of them."""
    for d in dirs:
        found = {}
        for key, parts in MNIST_FILES.items():
            hits = [d / n for n in mnist_file_names(*parts) if (d / n).is_file()]
            if hits:
                found[key] = hits[0]
        if len(found) == len(MNIST_FILES):
            return found
    return None


def load_mnist(files: dict[str, Path]) -> Arrays:
    """Reads the MNIST files found by :func:`find_mnist`.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images uint8 ``[N, 28, 28, 1]``.

    Raises:
        DataError: If a file is corrupt or images and labels disagree.
    """
    a = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        x, y = a[f"x_{split}"], a[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"MNIST {split} files {files[f'x_{split}']} and {files[f'y_{split}']} "
                f"do not match: images {x.shape}, labels {y.shape}"
            )
    return (
        a["x_train"][..., None],
        a["y_train"].astype(np.int32),
        a["x_test"][..., None],
        a["y_test"].astype(np.int32),
    )


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only reconstructs numpy arrays (no arbitrary code execution)."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR python pickle into uint8 NHWC images and int32 labels."""
    try:
        with open(path, "rb") as f:
            d = _NumpyUnpickler(f, encoding="bytes").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(d[label_key], dtype=np.int32)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError, TypeError) as e:
        raise DataError(f"cannot read CIFAR file {path}: {type(e).__name__}: {e}") from None
    if len(data) != len(labels):
        raise DataError(f"corrupt CIFAR file {path}: {len(data)} images but {len(labels)} labels")
    return data.transpose(0, 2, 3, 1).copy(), labels


def cifar_candidates(name: str, dirs: list[Path]) -> list[Path]:
    """Folders that may hold ``name``'s files: each dir and its original sub-folder."""
    sub = CIFAR_LAYOUT[name][0]
    return [c for d in dirs for c in (d, d / sub)]


def find_cifar(name: str, dirs: list[Path]) -> Path | None:
    """Returns the first candidate folder holding all of ``name``'s pickles."""
    _, train, test, _ = CIFAR_LAYOUT[name]
    for d in cifar_candidates(name, dirs):
        if all((d / f).is_file() for f in (*train, test)):
            return d
    return None


def load_cifar(name: str, folder: Path) -> Arrays:
    """Reads CIFAR-10 (``data_batch_1..5``, ``test_batch``) or CIFAR-100 (``train``, ``test``).

    Each pickle holds ``b'data'``, uint8 ``[N, 3072]`` (R, G, B planes of 32x32,
    row-major) and ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100, used).
    ``batches.meta`` / ``meta`` are not needed.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images uint8 ``[N, 32, 32, 3]``.

    Raises:
        DataError: If a file is unreadable or malformed.
    """
    _, train, test, key = CIFAR_LAYOUT[name]
    parts = [_read_cifar_pickle(folder / f, key) for f in train]
    x_test, y_test = _read_cifar_pickle(folder / test, key)
    x_train = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y_train = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return x_train, y_train, x_test, y_test
