"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits.

The CSV shipped inside scikit-learn (``sklearn/datasets/data/digits.csv.gz``; 1,797
rows of 64 pixel values in 0..16 followed by the label) is read directly, without
importing sklearn (which would pull in scipy and is slow).

Split: ``numpy.random.default_rng(0).permutation(1797)``; the first 1,437 indices
are the training set and the last 360 the test set (an 80/20 split, the test size
rounded up as in ``sklearn.model_selection.train_test_split(test_size=0.2)``).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .base import DataError

NUM_TRAIN = 1437
NUM_TEST = 360


def digits_csv_path() -> Path:
    """Locates ``digits.csv.gz`` inside the installed scikit-learn package.

    Raises:
        DataError: If scikit-learn (or its bundled file) is missing.
    """
    spec = importlib.util.find_spec("sklearn")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    raise DataError(
        "the default 'digits' dataset needs scikit-learn: "
        "pip install 'three_regimes_jax[demo]' (or pip install scikit-learn)"
    )


def load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads the digits and splits them deterministically into 1,437 / 360.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: float32 ``[N, 8, 8, 1]`` raw pixel
        values in 0..16 and int32 labels in 0..9.

    Raises:
        DataError: If scikit-learn is missing or the file is malformed.
    """
    path = digits_csv_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    if table.shape != (NUM_TRAIN + NUM_TEST, 65):
        raise DataError(f"unexpected digits table shape {table.shape} in {path}")
    x = table[:, :64].reshape(-1, 8, 8, 1)
    y = table[:, 64].astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(y))
    train, test = perm[:NUM_TRAIN], perm[NUM_TRAIN:]
    return x[train], y[train], x[test], y[test]
