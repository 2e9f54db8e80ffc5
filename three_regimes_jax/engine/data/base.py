"""Core types of the data subpackage: :class:`Dataset` and :class:`DataError`."""

from __future__ import annotations

import dataclasses

import numpy as np

from three_regimes_jax.config import DATASET_NAMES
from three_regimes_jax.errors import UserError

DATASETS = DATASET_NAMES
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "cifar100": 100, "ag_news": 4}


class DataError(UserError):
    """One-line, user-facing: what is wrong and how to fix it (CLI exit code 2)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory classification dataset: images, or token ids for text.

    Equality and hashing are by identity (``eq=False``): comparing numpy arrays
    field-by-field is ambiguous.

    Attributes:
        name: Dataset name, one of :data:`DATASETS`.
        x_train: Normalized training images, float32 ``[N, H, W, C]``; for text
            (``ag_news``) int32 token ids ``[N, L]`` right-padded with 0.
        y_train: Training labels, int32 ``[N]``.
        x_test: Test inputs, as ``x_train`` (``[M, H, W, C]`` or ``[M, L]``).
        y_test: Test labels, int32 ``[M]``.
        num_classes: Number of classes.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one input: ``(H, W, C)`` for images, ``(L,)`` for token ids."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return int(self.x_test.shape[0])
