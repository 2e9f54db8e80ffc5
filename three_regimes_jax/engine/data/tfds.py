"""TensorFlow-free TFDS reader via ``tfds.data_source`` (ArrayRecord random access).

The dataset must already be prepared in ``array_record`` format, e.g.
``tfds build mnist --file_format=array_record``; nothing is downloaded.
"""

from __future__ import annotations

import os

import numpy as np

from .base import DataError

TFDS_NAMES = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100"}


def _read_split(tfds, name: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    # Index one example at a time: ``__getitems__`` fails under tfds.testing.mock_data.
    examples = [src[i] for i in range(len(src))]
    if not examples:
        raise DataError(f"TFDS '{name}' split '{split}' is empty")
    x = np.stack([np.asarray(e["image"], dtype=np.uint8) for e in examples])
    y = np.array([int(e["label"]) for e in examples], dtype=np.int32)
    return x, y


def load_tfds(
    name: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads the train and test splits of a prepared TFDS dataset.

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
    tfds_name = TFDS_NAMES[name]
    try:
        import tensorflow_datasets as tfds  # lazy: slow to import
    except ImportError:
        raise DataError(
            "tensorflow_datasets is not installed (pip install tensorflow-datasets)"
        ) from None
    where = os.fspath(data_dir) if data_dir is not None else None
    try:
        x_train, y_train = _read_split(tfds, tfds_name, "train", where)
        x_test, y_test = _read_split(tfds, tfds_name, "test", where)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - TFDS raises many types (NotImplementedError...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"TFDS '{tfds_name}' (data_dir={where or 'TFDS default'}) unavailable: {reason}"
        ) from None
    return x_train, y_train, x_test, y_test
