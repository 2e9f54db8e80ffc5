"""Data loading: MNIST, CIFAR-10/100, the embedded digits and AG News.

Images come from the original files or TFDS; AG News from the original CSV or
TFDS ``ag_news_subset``, as int32 token ids.

Example:
    >>> ds = load_dataset("mnist", "/data", use_data_size=1000, pad_to=32)
    >>> ds.x_train.shape, ds.y_train.dtype
    ((1000, 32, 32, 1), dtype('int32'))
    >>> text = load_dataset("ag_news", "/data", split_test=0.8, max_len=64)
    >>> text.x_train.shape, text.x_train.dtype
    ((6080, 64), dtype('int32'))
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from . import files, transforms
from .ag_news import load_ag_news
from .base import DATASETS, NUM_CLASSES, DataError, Dataset
from .digits import load_digits
from .tfds import load_tfds
from .transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    MNIST_MEAN,
    MNIST_STD,
    add_label_noise,
    normalize,
    pad_to,
)

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "ENV_VAR",
    "MNIST_MEAN",
    "MNIST_STD",
    "NUM_CLASSES",
    "SOURCES",
    "DataError",
    "Dataset",
    "add_label_noise",
    "augment_pad_value",
    "load_ag_news",
    "load_dataset",
    "normalize",
    "pad_to",
]

ENV_VAR = "THREE_REGIMES_DATA_DIR"
SOURCES = ("auto", "files", "tfds")
_EXPECTED = {
    "mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch)",
    "cifar100": "cifar-100-python/ (train, test)",
}
_STATS = {"mnist": (MNIST_MEAN, MNIST_STD), "cifar10": (CIFAR_MEAN, CIFAR_STD)}
_STATS["cifar100"] = _STATS["cifar10"]
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def augment_pad_value(dataset: str) -> np.ndarray:
    """``[C]`` float32: a black pixel after normalisation, ``-mean / std`` per channel.

    The padding value of the random-crop augmentation: the official code pads
    the raw image with black before normalising (torchvision ``RandomCrop``).

    Raises:
        DataError: for datasets without fixed image statistics (digits, text).
    """
    if dataset not in _STATS:
        raise DataError(f"--augment is for CIFAR (or MNIST) images, not --dataset {dataset}")
    mean, std = (np.asarray(v, np.float32) for v in _STATS[dataset])
    return -mean / std


def _base_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """Explicit ``data_dir``, else ``$THREE_REGIMES_DATA_DIR``, else ``None``."""
    base = data_dir if data_dir is not None else os.environ.get(ENV_VAR) or None
    return Path(base).expanduser() if base is not None else None


def _from_files(name: str, dirs: list[Path]) -> Arrays | None:
    """Reads original files from the first matching dir; ``None`` if none has them."""
    if name == "mnist":
        found = files.find_mnist(dirs)
        return None if found is None else files.load_mnist(found)
    folder = files.find_cifar(name, dirs)
    return None if folder is None else files.load_cifar(name, folder)


def _load_raw(name: str, data_dir: str | os.PathLike | None, source: str) -> Arrays:
    """Loads uint8 images and int32 labels from files and/or TFDS (see load_dataset)."""
    base = _base_dir(data_dir)
    dirs = [] if base is None else [base, base / name]
    tried = []
    if source in ("auto", "files"):
        arrays = _from_files(name, dirs)
        if arrays is not None:
            return arrays
        if base is None:
            tried.append(f"files: no directory given (data_dir=None and ${ENV_VAR} unset)")
        else:
            cands = dirs if name == "mnist" else files.cifar_candidates(name, dirs)
            tried.append(f"files in {', '.join(map(str, cands))}")
    if source in ("auto", "tfds"):
        try:
            return load_tfds(name, base)
        except DataError as e:
            tried.append(str(e))
    raise DataError(
        f"dataset '{name}' not found; tried {'; '.join(tried)}. Fix: pass --data-dir DIR "
        f"(or set {ENV_VAR}=DIR) where DIR or DIR/{name} holds {_EXPECTED[name]}, or prepare "
        f"TFDS '{name}' (tfds build {name} --file_format=array_record)"
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    source: str = "auto",
    use_data_size: int | None = None,
    label_noise: float = 0.0,
    noise_seed: int = 0,
    pad_to: int | None = None,
    split_test: float | None = None,
    vocab_size: int = 20000,
    max_len: int = 64,
    use_test_size: int | None = None,
) -> Dataset:
    """Loads, normalizes and optionally subsets / corrupts / pads a dataset.

    Args:
        name: One of :data:`DATASETS`. ``digits`` is embedded (read from the installed
            scikit-learn) and ignores ``data_dir`` and ``source``.
        data_dir: Folder with the original files, or its parent holding ``mnist/``,
            ``cifar10/`` ...; CIFAR may also sit in ``cifar-10-batches-py/`` /
            ``cifar-100-python/`` below either. Defaults to ``$THREE_REGIMES_DATA_DIR``.
            Also used as the TFDS ``data_dir`` (``None``: TFDS default).
        source: ``"files"`` (original files only), ``"tfds"`` (prepared TFDS
            ArrayRecord only) or ``"auto"`` (files if found, else TFDS).
        use_data_size: Keep only the first N training examples (before label noise).
        label_noise: Fraction in [0, 1] of training labels resampled uniformly from
            all classes (see :func:`add_label_noise`); the test set is untouched.
        noise_seed: Seed of the label-noise generator.
        pad_to: Zero-pad both splits to ``pad_to x pad_to`` after normalization
            (e.g. 32 for ConvNetSI); zero is the mean pixel. Images only.
        split_test: ``ag_news`` only: train on this fraction of each class of the
            test split and evaluate on the rest (see :func:`load_ag_news`).
        vocab_size: ``ag_news`` only: number of token ids (``<pad>``, ``<unk>``
            and the most frequent training words). Ignored for images.
        max_len: ``ag_news`` only: tokens per example (truncate / pad with 0).
            Ignored for images.
        use_test_size: Evaluate on the first N test
            examples only (quick runs: the metric passes cost as much as
            training on small training subsets).

    Returns:
        The :class:`Dataset`: float32 NHWC images normalized with the paper's
        constants (MNIST 0.1307/0.3081; CIFAR per-channel mean/std) after scaling to
        [0, 1]; digits are scaled by 1/16 and standardized with the scalar mean and
        std of the full 1,437-image training split. Labels are int32. For
        ``ag_news``, int32 token ids ``[N, max_len]`` (see :func:`load_ag_news`).

    Raises:
        DataError: On an unknown name or source, invalid options, missing data
            (naming every path / TFDS name tried) or corrupt files.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")
    if not 0.0 <= label_noise <= 1.0:
        raise DataError(f"--label-noise must be in [0, 1], got {label_noise!r}")
    if pad_to is not None and (
        isinstance(pad_to, bool) or not isinstance(pad_to, (int, np.integer))
    ):
        raise DataError(f"pad_to must be an integer or None, got {pad_to!r}")
    if key != "digits" and data_dir is not None and not Path(data_dir).is_dir():
        what = "is not a directory" if Path(data_dir).exists() else "does not exist"
        raise DataError(f"--data-dir {data_dir} {what}; pass the folder holding the dataset")
    if key == "ag_news":
        if pad_to is not None:
            raise DataError("pad_to applies to image datasets only, not to ag_news")
        text = load_ag_news(
            _base_dir(data_dir),
            split_test=split_test,
            vocab_size=vocab_size,
            max_len=max_len,
            use_data_size=use_data_size,
            label_noise=label_noise,
            noise_seed=noise_seed,
            source=source,
        )
        return _keep_test(text, use_test_size)
    if split_test is not None:
        raise DataError(f"--split-test applies to --dataset ag_news only, not to {key}")
    num_classes = NUM_CLASSES[key]
    if key == "digits":
        x_train, y_train, x_test, y_test = load_digits()
        mean, std = (x_train / 16.0).mean(), (x_train / 16.0).std()
        stats, scale = ((float(mean),), (float(std),)), 16.0
    else:
        x_train, y_train, x_test, y_test = _load_raw(key, data_dir, source)
        stats, scale = _STATS[key], 255.0
    for split, y in (("train", y_train), ("test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{key} {split} labels outside [0, {num_classes}); corrupt data?")
    if use_data_size is not None:
        x_train, y_train = transforms.use_data_size(x_train, y_train, use_data_size)
    x_train = normalize(x_train, *stats, scale=scale)
    x_test = normalize(x_test, *stats, scale=scale)
    y_train = add_label_noise(y_train, label_noise, num_classes, noise_seed).astype(np.int32)
    if pad_to is not None:
        x_train = transforms.pad_to(x_train, pad_to)
        x_test = transforms.pad_to(x_test, pad_to)
    ds = Dataset(key, x_train, y_train, x_test, y_test.astype(np.int32), num_classes)
    return _keep_test(ds, use_test_size)


def _keep_test(ds: Dataset, use_test_size: int | None) -> Dataset:
    """``ds`` with only its first ``use_test_size`` test examples (None: all)."""
    if use_test_size is None:
        return ds
    if isinstance(use_test_size, bool) or not 1 <= int(use_test_size) <= ds.num_test:
        raise DataError(
            f"--use-test-size must be an integer in [1, {ds.num_test}] (the test set), "
            f"got {use_test_size!r}"
        )
    n = int(use_test_size)
    return dataclasses.replace(ds, x_test=ds.x_test[:n].copy(), y_test=ds.y_test[:n].copy())
