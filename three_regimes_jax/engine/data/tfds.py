"""TensorFlow-free TFDS reader via ``tfds.data_source`` (ArrayRecord random access).

The dataset must already be prepared in ``array_record`` format, e.g.
``tfds build mnist --file_format=array_record``; nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import DataError

TFDS_NAMES = {
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "ag_news": "ag_news_subset",
}


def _import_tfds():
    try:
        import tensorflow_datasets as tfds  # lazy: slow to import
    except ImportError:
        raise DataError(
            "tensorflow_datasets is not installed (pip install tensorflow-datasets)"
        ) from None
    return tfds


def _read_examples(tfds, name: str, split: str, data_dir: str | None) -> list[dict[str, Any]]:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    # Index one example at a time: ``__getitems__`` fails under tfds.testing.mock_data.
    examples = [src[i] for i in range(len(src))]
    if not examples:
        raise DataError(f"TFDS '{name}' split '{split}' is empty")
    return examples


def read_tfds_splits(
    tfds_name: str, splits: tuple[str, ...], data_dir: str | os.PathLike | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Reads whole splits of a prepared TFDS dataset as lists of feature dicts.

    Args:
        tfds_name: TFDS name, e.g. ``"ag_news_subset"``.
        splits: Split names to read, e.g. ``("train", "test")``.
        data_dir: TFDS data directory; ``None`` uses the TFDS default.

    Returns:
        ``{split: [example, ...]}``; each example maps feature names to numpy
        values (text features come back as ``bytes``).

    Raises:
        DataError: If tensorflow_datasets is missing, the dataset is not prepared
            or a split is empty (one line naming the dataset and ``data_dir``).
    """
    tfds = _import_tfds()
    where = os.fspath(data_dir) if data_dir is not None else None
    try:
        return {split: _read_examples(tfds, tfds_name, split, where) for split in splits}
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types (NotImplementedError...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"TFDS '{tfds_name}' (data_dir={where or 'TFDS default'}) unavailable: {reason}"
        ) from None


def load_tfds(
    name: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads the train and test splits of a prepared TFDS image dataset.

    Args:
        name: One of ``mnist``, ``cifar10``, ``cifar100``.
        data_dir: TFDS data directory; ``None`` uses the TFDS default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
        ``(x_train, y_train, x_test, y_test)``: uint8 ``[N, H, W, C]`` images and
        int32 labels (fine labels for CIFAR-100).

    Raises:
        DataError: If tensorflow_datasets is missing or the dataset is not prepared.
    """
    data = read_tfds_splits(TFDS_NAMES[name], ("train", "test"), data_dir)
    out = []
    for split in ("train", "test"):
        examples = data[split]
        out.append(np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples]))
        out.append(np.array([int(e["label"]) for e in examples], dtype=np.int32))
    return out[0], out[1], out[2], out[3]
