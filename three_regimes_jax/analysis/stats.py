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

#: Per-epoch means over training steps: NaN at the start entry, where no step was taken.
STEP_KEYS = ("batch_loss", "batch_acc", "step_cos", "eff_grad_norm_traj")


def start_offset(metrics: Mapping[str, Any]) -> int:
    """1 if the first per-epoch entry is the start of training (no step taken yet), else 0.

    The start entry exists in results written since issue 10: ``epoch`` begins
    at 0 (a sweep), or the step metrics are NaN for every member at the first
    entry while the train loss is finite there (a fine-tune, whose first entry
    is its source epoch).  Results with ``eff_grad_norm_traj`` always have it.
    Older results start at the first trained epoch: 0.

    Args:
      metrics: ``metrics.npz``-like arrays (``train_loss`` [G, T] or [T]).
    """
    epoch = np.asarray(metrics.get("epoch", []), np.float64).reshape(-1)
    if (epoch.size and epoch[0] == 0) or "eff_grad_norm_traj" in metrics:
        return 1
    if "train_loss" not in metrics:
        return 0
    loss = np.asarray(metrics["train_loss"], np.float64)
    loss = loss[None] if loss.ndim == 1 else loss
    if loss.ndim != 2 or loss.shape[1] == 0:
        return 0
    for key in STEP_KEYS:
        if key not in metrics:
            continue
        a = np.asarray(metrics[key], np.float64)
        a = a[None] if a.ndim == 1 else a
        if a.shape == loss.shape:
            return int(bool(np.all(np.isnan(a[:, 0])) and np.any(np.isfinite(loss[:, 0]))))
    return 0


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
      mean_step_cos: mean ``step_cos`` over the window.
      rw_step_cos: the random-walk reference's mean ``step_cos`` at this ELR.
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
    mean_step_cos: float = float("nan")
    rw_step_cos: float = float("nan")


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
      step_cos: ``[G, T]`` epoch means of the cosine between the weights of
        adjacent iterations, or None.
      start: whether the metrics had a start entry (dropped here: ``T``
        counts trained epochs only).
    """

    loss: np.ndarray
    elr: np.ndarray
    seed: np.ndarray
    epoch: np.ndarray
    acc: np.ndarray | None
    cos: np.ndarray | None
    diverged: np.ndarray
    diverged_epoch: np.ndarray
    step_cos: np.ndarray | None = None
    start: bool = False


def _optional(metrics: Mapping[str, Any], name: str, g: int, t: int, off: int):
    """``metrics[name]`` as ``[G, T]`` without the start entry, or None if absent."""
    if name not in metrics:
        return None
    a = as_2d(metrics[name], name)
    if a.shape != (g, t + off):
        raise UserError(f"metrics[{name!r}] has shape {a.shape}, train_loss {(g, t + off)}")
    return a[:, off:]


def read_curves(metrics: Mapping[str, Any]) -> Curves:
    """The :class:`Curves` of ``metrics.npz``-like arrays (``train_loss`` and ``elr`` required).

    The start entry (:func:`start_offset`) is dropped: the curves hold the
    trained epochs only.

    Raises:
      UserError: a required array is missing, the shapes disagree, or no
        epoch was trained.
    """
    if "train_loss" not in metrics:
        raise UserError("metrics have no 'train_loss'; classify needs per-epoch train losses")
    loss = as_2d(metrics["train_loss"], "train_loss")
    g, t = loss.shape
    if t == 0:
        raise UserError("metrics have no epochs (train_loss has shape [G, 0])")
    off = start_offset(metrics)
    if t - off == 0:
        raise UserError("metrics hold only the start of training (no trained epoch)")
    if "elr" not in metrics:
        raise UserError("metrics have no 'elr'; classify needs each member's ELR")
    elr = np.asarray(metrics["elr"], np.float64).reshape(-1)
    seed = np.asarray(metrics.get("seed", np.zeros(g)), np.int64).reshape(-1)
    epoch = metrics.get("epoch", np.arange(1 - off, t + 1 - off))  # default: 1..T, or 0..T-1
    epoch = np.asarray(epoch, np.float64).reshape(-1)
    if elr.size != g or seed.size != g or epoch.size != t:
        raise UserError(
            f"metrics disagree in shape: train_loss {loss.shape}, elr {elr.shape}, "
            f"seed {seed.shape}, epoch {epoch.shape}"
        )
    epoch, t = epoch[off:], t - off
    if np.any(epoch <= 0):
        epoch = epoch - epoch.min() + 1.0  # logs need positive times
    diverged = np.asarray(metrics.get("diverged", np.zeros(g, bool)), bool).reshape(-1)
    div_epoch = np.asarray(metrics.get("diverged_epoch", np.full(g, -1)), np.int64).reshape(-1)
    return Curves(
        loss=loss[:, off:],
        elr=elr,
        seed=seed,
        epoch=epoch,
        acc=_optional(metrics, "train_acc", g, t, off),
        cos=_optional(metrics, "adjacent_cos", g, t, off),
        diverged=diverged,
        diverged_epoch=div_epoch,
        step_cos=_optional(metrics, "step_cos", g, t, off),
        start=bool(off),
    )


def _nanmean(a: np.ndarray | None) -> float:
    """Mean of the finite entries (NaN if none or ``a`` is None)."""
    if a is None:
        return float("nan")
    a = a[np.isfinite(a)]
    return float(np.mean(a)) if a.size else float("nan")


def member_stats(
    cv: Curves,
    i: int,
    n: int,
    rw: Mapping[str, float],
    quantile: float,
) -> WindowStats:
    """Statistics of member ``i`` over its last ``n`` trained epochs (loss finite there).

    Args:
      cv: the curves (trained epochs only).
      i: member index.
      n: window length.
      rw: the random-walk reference of this member: ``{"adjacent_cos": ...,
        "step_cos": ...}`` (missing or NaN: no reference).
      quantile: the quantile of :func:`trend`.
    """
    loss = cv.loss[i]
    w = slice(loss.size - n, loss.size)
    lw = loss[w]
    slope, noise = trend(cv.epoch[w], lw, quantile)

    def window(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else a[i, w]

    return WindowStats(
        window=n,
        median_loss=float(np.median(lw)),
        mean_loss=float(np.mean(lw)),
        slope=slope,
        slope_noise=noise,
        falling_frac=float(np.mean(np.diff(lw) < 0)) if n >= 2 else 0.0,
        mean_acc=_nanmean(window(cv.acc)),
        mean_cos=_nanmean(window(cv.cos)),
        rw_cos=float(rw.get("adjacent_cos", float("nan"))),
        mean_step_cos=_nanmean(window(cv.step_cos)),
        rw_step_cos=float(rw.get("step_cos", float("nan"))),
    )


#: The cosines a random-walk reference run provides.
RW_KEYS = ("adjacent_cos", "step_cos")

#: A random-walk reference: (elr, seed or None) -> {cosine name: window mean}.
RwReference = dict[tuple[float, int | None], dict[str, float]]


def rw_reference(
    random_walk: Mapping[str, Any] | None, window: Callable[[int], int]
) -> RwReference:
    """Window means of a random-walk run's cosines, keyed by (elr, seed) and (elr, None).

    The start entry (:func:`start_offset`) is left out; the window is the
    last ``window(T)`` of its ``T`` trained epochs.

    Args:
      random_walk: the random-walk run's metrics (None: no reference).
      window: number of last epochs to average for a run of ``T`` epochs
        (:meth:`~three_regimes_jax.analysis.regimes.Criteria.window`).

    Returns:
      ``{(elr, seed): {"adjacent_cos": mean, "step_cos": mean}, (elr, None):
      {...}}`` with the cosines the run has (seeds averaged under ``None``).

    Raises:
      UserError: the run has no ``elr`` or neither cosine.
    """
    if random_walk is None:
        return {}
    keys = [k for k in RW_KEYS if k in random_walk]
    if not keys or "elr" not in random_walk:
        raise UserError(
            "the random-walk reference needs 'elr' and 'adjacent_cos' or 'step_cos' arrays"
        )
    off = start_offset(random_walk)
    elr = np.asarray(random_walk["elr"], np.float64).reshape(-1)
    seed = np.asarray(random_walk.get("seed", np.zeros(elr.size)), np.int64).reshape(-1)
    acc: dict[tuple[float, int | None], dict[str, list[float]]] = {}
    for key in keys:
        cos = as_2d(random_walk[key], key)[:, off:]
        n = window(max(cos.shape[1], 1))
        for i in range(elr.size):
            v = _nanmean(cos[i, -n:])
            if np.isfinite(v):
                for k in ((float(elr[i]), int(seed[i])), (float(elr[i]), None)):
                    acc.setdefault(k, {}).setdefault(key, []).append(v)
    return {k: {n: float(np.mean(v)) for n, v in d.items()} for k, d in acc.items()}


def lookup_rw(ref: RwReference, elr: float, seed: int) -> dict[str, float]:
    """The reference of (``elr``, ``seed``), else of ``elr`` over all seeds, else ``{}``."""
    for want in (seed, None):
        for (e, s), v in ref.items():
            if s == want and math.isclose(e, elr, rel_tol=1e-6):
                return v
    return {}


__all__ = [
    "LOG_FLOOR",
    "RW_KEYS",
    "STEP_KEYS",
    "Curves",
    "RwReference",
    "WindowStats",
    "as_2d",
    "lookup_rw",
    "member_stats",
    "read_curves",
    "rw_reference",
    "start_offset",
    "trend",
    "trend_slope",
]
