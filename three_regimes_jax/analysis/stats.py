"""Window statistics of per-epoch curves, the inputs of the regime decision.

:func:`read_curves` checks and shapes the per-epoch arrays; :func:`trend_slope`
is the per-decade slope of a loss curve's lower envelope; :func:`member_stats`
gathers everything :mod:`three_regimes_jax.analysis.regimes` decides on for one
member over its window of last epochs.  numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from three_regimes_jax.errors import UserError

#: Losses are clipped here before taking logs (the toy reaches exactly 0).
LOG_FLOOR = 1e-30


def trend_slope(epoch: Any, loss: Any, quantile: float = 0.25) -> float:
    """Slope of the lower envelope of ``log10(loss)`` against ``log10(epoch)``.

    The series is split into its first and last ``n // 2`` points (the middle
    point of an odd ``n`` is dropped).  The slope is the ``s`` for which the
    detrended curve ``log10(loss) - s * log10(epoch)`` has the same
    ``quantile``-quantile in both halves (found by bisection; the difference
    is strictly decreasing in ``s``).  A low quantile follows the floor of the
    curve and ignores the upward spikes regime-1 runs show now and then (a
    spike and its recovery are a minority of either half).  A pure power law
    ``loss = c * epoch^-p`` gives exactly ``-p``; a stationary plateau gives 0
    up to noise.  Losses are clipped at 1e-30 before the log (the toy reaches
    exactly 0).  The regime decision also uses the slope's noise scale, the
    mean interquartile range of ``log10(loss)`` within the halves over the
    distance of their mean ``log10(epoch)``, as the unit of the slope test
    (see :func:`trend`).

    Args:
      epoch: ``[n]`` increasing positive times (epochs or steps).
      loss: ``[n]`` finite losses.
      quantile: the envelope's quantile in ``[0, 1]`` (0.5: the median).

    Returns:
      The slope per decade of epochs, or NaN for ``n < 2``.
    """
    return trend(epoch, loss, quantile)[0]


def trend(epoch: Any, loss: Any, quantile: float) -> tuple[float, float]:
    """:func:`trend_slope` and its noise scale (both NaN for ``n < 2``)."""
    t = np.log10(np.asarray(epoch, np.float64).reshape(-1))
    y = np.log10(np.maximum(np.asarray(loss, np.float64).reshape(-1), LOG_FLOOR))
    h = y.size // 2
    nan = float("nan")
    if h < 1:
        return nan, nan
    ta, tb, a, b = t[:h], t[-h:], y[:h], y[-h:]
    gap = float(tb.min() - ta.max())
    if gap <= 0:
        return nan, nan

    def diff(s: float) -> float:
        return float(np.quantile(b - s * tb, quantile) - np.quantile(a - s * ta, quantile))

    # diff(s) decreases at least as fast as gap * s, so the root lies within +-bound.
    lo = -(float(y.max() - y.min()) / gap + 1.0)
    hi = -lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if diff(mid) > 0:
            lo = mid
        else:
            hi = mid
    iqr = [np.quantile(v, 0.75) - np.quantile(v, 0.25) for v in (a, b)]
    return 0.5 * (lo + hi), float(np.mean(iqr) / (np.mean(tb) - np.mean(ta)))


@dataclasses.dataclass
class WindowStats:
    """Window statistics of one member (NaN: not available).

    Attributes:
      window: number of last epochs the statistics cover.
      median_loss: median train loss over the window.
      mean_loss: mean train loss over the window.
      slope: :func:`trend_slope` of the window.
      slope_noise: the slope's noise scale (see :func:`trend`).
      falling_frac: fraction of the window's epochs in which the loss fell.
      mean_acc: mean train accuracy over the window.
      mean_cos: mean ``adjacent_cos`` over the window.
      rw_cos: the random-walk reference's mean ``adjacent_cos`` at this ELR.
    """

    window: int
    median_loss: float
    mean_loss: float
    slope: float
    slope_noise: float
    falling_frac: float
    mean_acc: float = float("nan")
    mean_cos: float = float("nan")
    rw_cos: float = float("nan")


def as_2d(a: Any, name: str) -> np.ndarray:
    """``metrics[name]`` as float64 ``[G, T]`` (a ``[T]`` curve becomes ``[1, T]``)."""
    arr = np.asarray(a, np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise UserError(f"metrics[{name!r}] must have shape [G, T], got {arr.shape}")
    return arr


@dataclasses.dataclass
class Curves:
    """The per-epoch arrays a classification reads, checked and shaped.

    Attributes:
      loss: ``[G, T]`` train losses.
      elr: ``[G]`` member ELRs.
      seed: ``[G]`` member seeds (default 0).
      epoch: ``[T]`` positive times (default 1..T; shifted to start at 1 if not positive).
      acc: ``[G, T]`` train accuracies, or None.
      cos: ``[G, T]`` adjacent-epoch cosines, or None.
      diverged: ``[G]`` divergence flags (default False).
      diverged_epoch: ``[G]`` first non-finite epochs (-1: none).
    """

    loss: np.ndarray
    elr: np.ndarray
    seed: np.ndarray
    epoch: np.ndarray
    acc: np.ndarray | None
    cos: np.ndarray | None
    diverged: np.ndarray
    diverged_epoch: np.ndarray


def read_curves(metrics: Mapping[str, Any]) -> Curves:
    """The :class:`Curves` of ``metrics.npz``-like arrays (``train_loss`` and ``elr`` required).

    Raises:
      UserError: a required array is missing, or the shapes disagree.
    """
    if "train_loss" not in metrics:
        raise UserError("metrics have no 'train_loss'; classify needs per-epoch train losses")
    loss = as_2d(metrics["train_loss"], "train_loss")
    g, t = loss.shape
    if t == 0:
        raise UserError("metrics have no epochs (train_loss has shape [G, 0])")
    if "elr" not in metrics:
        raise UserError("metrics have no 'elr'; classify needs each member's ELR")
    elr = np.asarray(metrics["elr"], np.float64).reshape(-1)
    seed = np.asarray(metrics.get("seed", np.zeros(g)), np.int64).reshape(-1)
    epoch = np.asarray(metrics.get("epoch", np.arange(1, t + 1)), np.float64).reshape(-1)
    if elr.size != g or seed.size != g or epoch.size != t:
        raise UserError(
            f"metrics disagree in shape: train_loss {loss.shape}, elr {elr.shape}, "
            f"seed {seed.shape}, epoch {epoch.shape}"
        )
    if np.any(epoch <= 0):
        epoch = epoch - epoch.min() + 1.0  # logs need positive times
    acc = as_2d(metrics["train_acc"], "train_acc") if "train_acc" in metrics else None
    cos = as_2d(metrics["adjacent_cos"], "adjacent_cos") if "adjacent_cos" in metrics else None
    diverged = np.asarray(metrics.get("diverged", np.zeros(g, bool)), bool).reshape(-1)
    div_epoch = np.asarray(metrics.get("diverged_epoch", np.full(g, -1)), np.int64).reshape(-1)
    return Curves(loss, elr, seed, epoch, acc, cos, diverged, div_epoch)


def member_stats(
    loss: np.ndarray,
    epoch: np.ndarray,
    n: int,
    acc: np.ndarray | None,
    cos: np.ndarray | None,
    rw_cos: float,
    quantile: float,
) -> WindowStats:
    """Statistics of one member's last ``n`` epochs (``loss`` finite there)."""
    w = slice(loss.size - n, loss.size)
    lw = loss[w]
    slope, noise = trend(epoch[w], lw, quantile)
    return WindowStats(
        window=n,
        median_loss=float(np.median(lw)),
        mean_loss=float(np.mean(lw)),
        slope=slope,
        slope_noise=noise,
        falling_frac=float(np.mean(np.diff(lw) < 0)) if n >= 2 else 0.0,
        mean_acc=float(np.mean(acc[w])) if acc is not None else float("nan"),
        mean_cos=float(np.nanmean(cos[w]))
        if cos is not None and np.any(np.isfinite(cos[w]))
        else float("nan"),
        rw_cos=rw_cos,
    )


def rw_reference(
    random_walk: Mapping[str, Any] | None, window: Callable[[int], int]
) -> dict[tuple[float, int | None], float]:
    """Window-mean ``adjacent_cos`` of a random-walk run, keyed by (elr, seed) and (elr, None).

    Args:
      random_walk: the random-walk run's metrics (None: no reference).
      window: number of last epochs to average for a run of ``T`` epochs
        (:meth:`~three_regimes_jax.analysis.regimes.Criteria.window`).
    """
    if random_walk is None:
        return {}
    if "adjacent_cos" not in random_walk or "elr" not in random_walk:
        raise UserError("the random-walk reference needs 'elr' and 'adjacent_cos' arrays")
    cos = as_2d(random_walk["adjacent_cos"], "adjacent_cos")
    elr = np.asarray(random_walk["elr"], np.float64).reshape(-1)
    seed = np.asarray(random_walk.get("seed", np.zeros(elr.size)), np.int64).reshape(-1)
    n = window(cos.shape[1])
    ref: dict[tuple[float, int | None], list[float]] = {}
    for i in range(elr.size):
        row = cos[i, -n:]
        if np.any(np.isfinite(row)):
            v = float(np.nanmean(row))
            ref.setdefault((float(elr[i]), int(seed[i])), []).append(v)
            ref.setdefault((float(elr[i]), None), []).append(v)
    return {k: float(np.mean(v)) for k, v in ref.items()}


def lookup_rw(ref: dict[tuple[float, int | None], float], elr: float, seed: int) -> float:
    """The reference value of (``elr``, ``seed``), else of ``elr`` over all seeds, else NaN."""
    for (e, s), v in ref.items():
        if s == seed and math.isclose(e, elr, rel_tol=1e-6):
            return v
    for (e, s), v in ref.items():
        if s is None and math.isclose(e, elr, rel_tol=1e-6):
            return v
    return float("nan")


__all__ = [
    "LOG_FLOOR",
    "Curves",
    "WindowStats",
    "as_2d",
    "lookup_rw",
    "member_stats",
    "read_curves",
    "rw_reference",
    "trend",
    "trend_slope",
]
