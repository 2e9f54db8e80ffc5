"""Numpy transforms: normalization, padding, subsetting and label noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import DataError

# Normalization constants used in the paper, applied to images scaled to [0, 1].
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def normalize(
    x: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 255.0
) -> np.ndarray:
    """Scales ``x`` to [0, 1] by ``1 / scale``, then standardizes per channel.

    Args:
        x: Images ``[N, H, W, C]`` of any numeric dtype (e.g. uint8 in 0..255).
        mean: Per-channel mean (length ``C`` or 1) in the [0, 1] scale.
        std: Per-channel standard deviation, same length as ``mean``.
        scale: Value that maps to 1.0 (255 for uint8 images).

    Returns:
        float32 array ``(x / scale - mean) / std`` of the same shape.
    """
    mean_a = np.asarray(mean, np.float32)
    std_a = np.asarray(std, np.float32)
    out = x.astype(np.float32)  # always a fresh array, safe to modify in place
    out *= np.float32(1.0 / scale) / std_a
    out -= mean_a / std_a
    return out


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pads the H and W axes of ``[N, H, W, C]`` images to ``size x size``.

    Padding is symmetric (28 -> 32 adds 2 on each side); an odd difference puts the
    extra row/column at the bottom/right.

    Args:
        x: Images ``[N, H, W, C]``.
        size: Target height and width.

    Returns:
        The padded array (``x`` itself if already ``size x size``).

    Raises:
        DataError: If the images are larger than ``size``.
    """
    h, w = x.shape[1], x.shape[2]
    if h > size or w > size:
        raise DataError(
            f"cannot pad {h}x{w} images to {size}x{size}: pad_to must be >= {max(h, w)}"
        )
    if h == size and w == size:
        return x
    top, left = (size - h) // 2, (size - w) // 2
    widths = ((0, 0), (top, size - h - top), (left, size - w - left), (0, 0))
    return np.pad(x, widths)


def use_data_size(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Keeps the first ``n`` examples, as in the paper's code.

    Args:
        x: Images ``[N, ...]``.
        y: Labels ``[N]``.
        n: Number of examples to keep, ``1 <= n <= N``.

    Returns:
        ``(x[:n], y[:n])`` as copies (so the full arrays can be freed).

    Raises:
        DataError: If ``n`` is out of range.
    """
    total = len(y)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
        raise DataError(
            f"--use-data-size must be an integer in [1, {total}] (the training set), got {n!r}"
        )
    if n == total:
        return x, y
    return x[:n].copy(), y[:n].copy()


def label_noise_indices(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Indices whose labels :func:`add_label_noise` resamples (same RNG stream).

    Args:
        n: Number of training examples.
        fraction: Noise fraction in [0, 1].
        seed: Seed for ``numpy.random.default_rng``.

    Returns:
        int64 array of ``round(fraction * n)`` distinct indices.

    Raises:
        DataError: If ``fraction`` is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"--label-noise must be in [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    return rng.choice(n, size=round(fraction * n), replace=False)


def add_label_noise(y: np.ndarray, fraction: float, num_classes: int, seed: int = 0) -> np.ndarray:
    """Randomizes a fraction of labels (paper, App. G).

    With ``numpy.random.default_rng(seed)``, chooses ``round(fraction * N)`` indices
    without replacement and gives them labels drawn uniformly from all classes (so a
    resampled label may coincide with the original one).

    Args:
        y: Labels ``[N]``.
        fraction: Noise fraction in [0, 1]; 0 returns ``y`` unchanged.
        num_classes: Number of classes to draw from.
        seed: Seed for the random generator.

    Returns:
        A new int32 label array (``y`` itself when ``fraction == 0``).

    Raises:
        DataError: If ``fraction`` is outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise DataError(f"--label-noise must be in [0, 1], got {fraction!r}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y), size=round(fraction * len(y)), replace=False)
    if idx.size == 0:
        return y
    out = np.array(y, dtype=np.int32)
    out[idx] = rng.integers(0, num_classes, size=idx.size)
    return out
