"""Regime classification of trained grids and transition-ELR brackets.

Kodryan et al. (NeurIPS 2022) find that a scale-invariant network trained on
the sphere at a fixed effective learning rate (ELR) ends in one of three
regimes: (1) convergence (the train loss keeps falling towards 0), (2) chaotic
equilibrium (the loss stabilises at a level away from chance and fluctuates
around it), (3) divergence (a random-walk-like state: train accuracy at chance,
loss at or above the random-guess level, weights of consecutive epochs
decorrelated).  :func:`classify` turns per-epoch curves into these labels with
explicit, tunable thresholds (:class:`Criteria`); :func:`transition_brackets`
turns labels into brackets of the transition ELRs.

The rule, applied to every member on the window of its last epochs (the last
``last_frac`` of the run, at least ``min_window`` epochs):

1. **Non-finite** (``diverged`` flag, or a NaN/inf train loss in the window):
   regime 3, confidence 1.
2. **Regime 3** if any available chance test fires: mean train accuracy
   ``< 1/num_classes + chance_margin``; mean train loss
   ``>= chance_loss_frac * chance_loss`` (``chance_loss = ln(num_classes)``,
   the loss of a uniform guess, unless given); or, with a random-walk reference
   run (App. M), mean ``adjacent_cos`` at most the reference's plus ``cos_margin``.
   These tests are vetoed while the loss still falls steadily (in at least
   ``steady_frac`` of the window's epochs, with a slope ``<= falling_slope``):
   an undertrained run starts at chance level too.
3. **Regime 1** if the median train loss is ``< converged_loss``, or it is
   ``< low_loss`` and still falling: the slope of the lower envelope of
   ``log10(loss)`` against ``log10(epoch)`` (:func:`trend_slope`) is
   ``<= falling_slope``; or, above ``low_loss``, it falls *steadily* (slope
   ``<= falling_slope`` and falling in at least ``steady_frac`` of the
   window's epochs): a slow run at a small ELR that has not converged yet
   (half confidence).  Without this, short runs at tiny ELRs would be labelled
   2 and break the monotone 1-2-3 order that the transition search relies on.
4. **Regime 2** otherwise: a level away from chance that does not keep falling.

Confidence is margin based: every test has a statistic ``s``, a threshold
``t`` and a unit ``u``, the distance between the threshold and the level it
guards (accuracy: ``chance_margin``; loss against chance: ``(1 -
chance_loss_frac) * chance_loss``; cosine: ``cos_margin``), or else a natural
scale (loss against ``low_loss``/``converged_loss``: one decade,
``|log10(s/t)|``; slope: the larger of ``|falling_slope|`` and the slope's own
noise scale, see :func:`trend_slope`).  The margin ``d = |s - t| / u`` is
squashed to ``tanh(d)`` in ``[0, 1)``: 0 on the threshold, about 0.76 one unit
away.  A label that needs every one of several tests (regime 1: low *and*
falling; not regime 3: no chance test fires) takes the smallest of their
confidences; a label that needs only one of several (regime 3: any test
fires; not regime 1: either test fails) takes the largest.  Regime 2 is "not 3
and not 1", so it takes the smaller of those two; it is halved when the loss
is still clearly falling (slope ``< -plateau_slope``): such a run may converge
with more epochs.  A converged run (median loss ``< converged_loss``) gets at
least 0.5; a vetoed chance test (the loss falls steadily) caps it at 0.25.
Without any chance test (no ``num_classes``, ``chance_loss`` or random-walk
reference), "not regime 3" is assumed with confidence 0.5.

This module imports only numpy and the standard library (the plotting package
uses it); the search for transitions by training lives in
:mod:`three_regimes_jax.transitions`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from three_regimes_jax.errors import UserError
from three_regimes_jax.results import load_results, write_json

REGIMES_FILE = "regimes.json"
BORDERS = ("1-2", "2-3")
#: Which label pairs bracket which border.  A direct jump 1 <-> 3 between two
#: neighbouring ELRs brackets both borders (the regime-2 range lies inside it).
_BORDER_PAIRS = {"1-2": ({1, 2}, {1, 3}), "2-3": ({2, 3}, {1, 3})}
_LOG_FLOOR = 1e-30  # losses are clipped here before taking logs (the toy reaches exactly 0)


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Thresholds of :func:`classify` (see the module docstring for the rule).

    The defaults are calibrated on real MLP-SI runs: MNIST, 20 epochs, ELRs
    1e-4..1 (expected 1, 1, 2, 3, 3) and the 8x8 digits, 40 and 60 epochs,
    ELRs 1e-3..1 (expected 1, 1, 2, 2, 3, 3, 3); every default sits with room
    between the regimes seen there.

    Attributes:
      last_frac: the window is the last ``ceil(last_frac * T)`` epochs.  0.5:
        the trend of a regime-1 run needs enough epochs that a spike and its
        slow recovery (several epochs on digits) stay a minority of either
        half (with 0.25, a 30-epoch digits run at ELR 1e-2 looked "rising");
        regime 2 and 3 settle within the first half on every run measured.
      min_window: but at least this many epochs (capped at ``T``): the
        statistics need a few points.
      chance_margin: regime 3 if the mean train accuracy is below
        ``1/num_classes + chance_margin``.  0.1: deep in regime 3 (ELR >= 0.1
        on MNIST and digits, 10 classes) the window means measured 0.11-0.21,
        regime-2 runs 0.88 and more.  Just past the 2/3 border accuracy stays
        higher (0.25 on MNIST at 0.1, 0.35 on digits at 0.05); the loss test
        below catches those.
      chance_loss_frac: regime 3 if the mean train loss is at least this
        fraction of the random-guess loss (``ln(num_classes)``, or the toy's
        sphere average ``sum(alpha)/2``).  0.9: networks in regime 3 sit above
        ``ln 10 = 2.30`` (their frozen last layer of norm 10 makes confident
        random guesses: window means measured 3.3-5.9), regime-2 runs below
        0.5; on the toy the regime-2 level ``(sum(alpha) - 1/elr)/2`` reaches
        90% of the random level only at ``elr = 10/sum(alpha)``.  The mean (not
        the median) is used: a random walk's time average is the random level.
      low_loss: regime 1 needs the median train loss over the window below it,
        unless the loss falls steadily (see the module docstring).
        0.05 (nats): window medians of regime-1 runs measured 0.005-0.015
        (MNIST, 20 epochs) and 0.001-0.015 (digits, 30-60 epochs), the MNIST
        regime-2 plateau 0.11 (0.09-0.15).  Near the 1/2 border the regime-2
        level falls towards 0 (digits at ELR 0.02: 0.007-0.016), so there the
        slope test decides.  The median ignores the rare spikes of regime-1
        runs.
      converged_loss: a median train loss below this is regime 1 whatever the
        slope (float32 floor: such a run cannot fall much further).
      falling_slope: regime 1 needs the slope of the lower envelope of
        ``log10(loss)`` against ``log10(epoch)`` (:func:`trend_slope`) at
        most this (per decade of epochs; ``1/t`` decay is -1, exponential
        decay is steeper, a plateau 0).  -0.25: regime-1 runs measured -0.35
        to -1.4, regime-2 runs -0.0 to +0.1 on a plateau and +1 to +2 while
        rising to it; a per-decade slope does not depend on the run length.
      trend_quantile: the quantile :func:`trend_slope` follows.  0.25: the
        floor of the curve, so the occasional spikes of regime-1 runs (10-30x
        for one or two epochs on digits) do not hide its fall.
      plateau_slope: a regime-2 loss with ``|slope| <= plateau_slope`` is
        called flat; one falling faster than ``-plateau_slope`` is called
        "still falling" and gets half the confidence (it may converge later).
      steady_frac: a loss that falls from one epoch to the next in at least
        this fraction of the window, with a slope ``<= falling_slope``, is
        still training: the chance tests are vetoed (a short or slow run
        starts above chance level, as the frozen last layer of norm 10 makes
        the initial loss about 2.9 on digits).  0.8: a stationary random walk
        falls in about half its epochs.
      cos_margin: with a random-walk reference (:func:`classify`
        ``random_walk``), regime 3 if the mean ``adjacent_cos`` is at most
        the reference's ``+ cos_margin``.  0.1: digits regime-3 runs measured
        0.00-0.03 against a reference of 0.00, regime 2 about 0.77.
    """

    last_frac: float = 0.5
    min_window: int = 5
    chance_margin: float = 0.1
    chance_loss_frac: float = 0.9
    low_loss: float = 0.05
    converged_loss: float = 1e-4
    falling_slope: float = -0.25
    trend_quantile: float = 0.25
    plateau_slope: float = 0.25
    steady_frac: float = 0.8
    cos_margin: float = 0.1

    def __post_init__(self):
        checks = [
            ("last_frac", 0.0 < self.last_frac <= 1.0, "in (0, 1]"),
            ("min_window", self.min_window >= 1, ">= 1"),
            ("chance_margin", self.chance_margin > 0, "> 0"),
            ("chance_loss_frac", self.chance_loss_frac > 0, "> 0"),
            ("low_loss", self.low_loss > 0, "> 0"),
            ("converged_loss", 0 < self.converged_loss <= self.low_loss, "in (0, low_loss]"),
            ("falling_slope", self.falling_slope < 0, "< 0"),
            ("trend_quantile", 0.0 <= self.trend_quantile <= 1.0, "in [0, 1]"),
            ("plateau_slope", self.plateau_slope > 0, "> 0"),
            ("steady_frac", 0.0 < self.steady_frac <= 1.0, "in (0, 1]"),
            ("cos_margin", self.cos_margin > 0, "> 0"),
        ]
        for name, ok, want in checks:
            value = getattr(self, name)
            if not (ok and np.isfinite(value)):
                raise UserError(f"criteria.{name} must be {want}, got {value}")

    def to_dict(self) -> dict[str, Any]:
        """The thresholds as a JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Criteria:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UserError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(
                f"unknown criteria {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**dict(d))

    def window(self, t: int) -> int:
        """Number of last epochs the statistics use for a run of ``t`` epochs."""
        return max(1, min(t, max(self.min_window, math.ceil(self.last_frac * t))))


# --------------------------------------------------------------------------- statistics


def _squash(margin: float) -> float:
    """Margin in natural units -> confidence in [0, 1)."""
    if not np.isfinite(margin):
        return 1.0
    return float(np.tanh(max(margin, 0.0)))


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
    exactly 0).  :func:`classify` also uses the slope's noise scale, the mean
    interquartile range of ``log10(loss)`` within the halves over the distance
    of their mean ``log10(epoch)``, as the unit of the slope test.

    Args:
      epoch: ``[n]`` increasing positive times (epochs or steps).
      loss: ``[n]`` finite losses.
      quantile: the envelope's quantile in ``[0, 1]`` (0.5: the median).

    Returns:
      The slope per decade of epochs, or NaN for ``n < 2``.
    """
    return _trend(epoch, loss, quantile)[0]


def _trend(epoch: Any, loss: Any, quantile: float) -> tuple[float, float]:
    """:func:`trend_slope` and its noise scale (both NaN for ``n < 2``)."""
    t = np.log10(np.asarray(epoch, np.float64).reshape(-1))
    y = np.log10(np.maximum(np.asarray(loss, np.float64).reshape(-1), _LOG_FLOOR))
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
class _Stats:
    """Window statistics of one member (NaN: not available)."""

    window: int
    median_loss: float
    mean_loss: float
    slope: float
    slope_noise: float
    falling_frac: float
    mean_acc: float = float("nan")
    mean_cos: float = float("nan")
    rw_cos: float = float("nan")


def _as_2d(a: Any, name: str) -> np.ndarray:
    arr = np.asarray(a, np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise UserError(f"metrics[{name!r}] must have shape [G, T], got {arr.shape}")
    return arr


def _member_stats(
    loss: np.ndarray,
    epoch: np.ndarray,
    n: int,
    acc: np.ndarray | None,
    cos: np.ndarray | None,
    rw_cos: float,
    quantile: float,
) -> _Stats:
    w = slice(loss.size - n, loss.size)
    lw = loss[w]
    slope, noise = _trend(epoch[w], lw, quantile)
    return _Stats(
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


def _rw_reference(
    random_walk: Mapping[str, Any] | None, criteria: Criteria
) -> dict[tuple[float, int | None], float]:
    """Window-mean ``adjacent_cos`` of a random-walk run, keyed by (elr, seed) and (elr, None)."""
    if random_walk is None:
        return {}
    if "adjacent_cos" not in random_walk or "elr" not in random_walk:
        raise UserError("the random-walk reference needs 'elr' and 'adjacent_cos' arrays")
    cos = _as_2d(random_walk["adjacent_cos"], "adjacent_cos")
    elr = np.asarray(random_walk["elr"], np.float64).reshape(-1)
    seed = np.asarray(random_walk.get("seed", np.zeros(elr.size)), np.int64).reshape(-1)
    n = criteria.window(cos.shape[1])
    ref: dict[tuple[float, int | None], list[float]] = {}
    for i in range(elr.size):
        row = cos[i, -n:]
        if np.any(np.isfinite(row)):
            v = float(np.nanmean(row))
            ref.setdefault((float(elr[i]), int(seed[i])), []).append(v)
            ref.setdefault((float(elr[i]), None), []).append(v)
    return {k: float(np.mean(v)) for k, v in ref.items()}


def _lookup_rw(ref: dict[tuple[float, int | None], float], elr: float, seed: int) -> float:
    for (e, s), v in ref.items():
        if s == seed and math.isclose(e, elr, rel_tol=1e-6):
            return v
    for (e, s), v in ref.items():
        if s is None and math.isclose(e, elr, rel_tol=1e-6):
            return v
    return float("nan")


# --------------------------------------------------------------------------- decision


def _decide(
    st: _Stats,
    c: Criteria,
    chance_acc: float | None,
    chance_loss: float | None,
    time_unit: str = "epochs",
) -> tuple[int, float, str]:
    """Label, confidence and reason of one finite member (see the module docstring)."""
    win = f"last {st.window} {time_unit}"
    # ---- regime 3: any chance test fires
    fired: list[tuple[float, str]] = []  # (confidence, text) of tests that fire
    passed: list[float] = []  # confidence that a test does not fire
    if chance_acc is not None and np.isfinite(st.mean_acc):
        thr = chance_acc + c.chance_margin
        conf = _squash(abs(st.mean_acc - thr) / c.chance_margin)
        if st.mean_acc < thr:
            fired.append(
                (conf, f"train acc {st.mean_acc:.3g} over {win} ~ chance {chance_acc:.3g}")
            )
        else:
            passed.append(conf)
    if chance_loss is not None and chance_loss > 0 and np.isfinite(st.mean_loss):
        thr = c.chance_loss_frac * chance_loss
        unit = chance_loss * max(abs(1.0 - c.chance_loss_frac), 0.1)
        conf = _squash(abs(st.mean_loss - thr) / unit)
        if st.mean_loss >= thr:
            fired.append(
                (
                    conf,
                    f"mean train loss {st.mean_loss:.3g} over {win} >= "
                    f"{c.chance_loss_frac:g} x random-guess loss {chance_loss:.3g}",
                )
            )
        else:
            passed.append(conf)
    if np.isfinite(st.mean_cos) and np.isfinite(st.rw_cos):
        thr = st.rw_cos + c.cos_margin
        conf = _squash(abs(st.mean_cos - thr) / c.cos_margin)
        if st.mean_cos <= thr:
            fired.append(
                (
                    conf,
                    f"adjacent-epoch cosine {st.mean_cos:.3g} ~ random walk {st.rw_cos:.3g}",
                )
            )
        else:
            passed.append(conf)
    steady = (
        st.falling_frac >= c.steady_frac and np.isfinite(st.slope) and st.slope <= c.falling_slope
    )
    note = ""
    if fired and not steady:
        fired.sort(key=lambda f: -f[0])  # strongest first
        return 3, fired[0][0], "; ".join(text for _, text in fired) + " (random-walk-like)"
    if fired:  # at chance level but falling steadily: still training, not a random walk
        note = (
            f"; near chance but falling in {st.falling_frac:.0%} of {time_unit}: not a random walk"
        )
        passed.append(0.25)
    not3 = min(passed) if passed else 0.5  # no chance test available: cannot rule out 3
    # ---- regime 1: low and falling (or below the float floor)
    level = f"median train loss {st.median_loss:.3g} over {win}"
    slope = f"slope {st.slope:+.2f}/decade" if np.isfinite(st.slope) else "slope n/a"
    if st.median_loss < c.converged_loss:
        conf = _squash(math.log10(c.converged_loss / max(st.median_loss, _LOG_FLOOR)))
        conf = max(conf, 0.5)  # below the floor is convergence in itself
        return 1, min(conf, not3), f"{level} < {c.converged_loss:g}: converged"
    low = st.median_loss < c.low_loss
    d_low = _squash(abs(math.log10(max(st.median_loss, _LOG_FLOOR) / c.low_loss)))
    falling = np.isfinite(st.slope) and st.slope <= c.falling_slope
    unit = max(abs(c.falling_slope), st.slope_noise if np.isfinite(st.slope_noise) else 0.0)
    d_fall = _squash(abs(st.slope - c.falling_slope) / unit) if np.isfinite(st.slope) else 0.5
    if low and falling:
        return 1, min(d_low, d_fall, not3), f"{level} < {c.low_loss:g} and falling ({slope})"
    if falling and steady:
        # Slow convergence (small ELR, few epochs): still descending steadily, just
        # not low yet; a plateau (regime 2) is flat or noisy, not steadily falling.
        return (
            1,
            0.5 * min(d_fall, not3),
            f"{level} above {c.low_loss:g} but falling steadily ({slope}, in "
            f"{st.falling_frac:.0%} of {time_unit}): still converging{note}",
        )
    # ---- regime 2: neither
    not1 = max(d for d, ok in ((d_low, low), (d_fall, falling)) if not ok)
    conf = min(not3, not1)
    if np.isfinite(st.slope) and st.slope < -c.plateau_slope:
        conf *= 0.5
        shape = f"still falling ({slope}) but above {c.low_loss:g}: may converge later"
        if low:
            shape = f"falling too slowly ({slope} > {c.falling_slope:g})"
    elif np.isfinite(st.slope) and st.slope > c.plateau_slope:
        shape = f"rising ({slope})"
    else:
        shape = f"flat ({slope})"
    if note:
        return 2, conf, f"{level}, {shape}{note}"
    return 2, conf, f"{level}, {shape}; away from chance (equilibrium)"


def classify(
    metrics: Mapping[str, Any],
    *,
    num_classes: int | None = None,
    criteria: Criteria | None = None,
    random_walk: Mapping[str, Any] | None = None,
    chance_loss: float | None = None,
    time_unit: str = "epochs",
) -> dict[str, Any]:
    """Labels every grid member with its regime (1, 2 or 3).

    Args:
      metrics: ``metrics.npz``-like arrays: ``train_loss`` [G, T] (or [T])
        and ``elr`` [G] are required; ``seed`` [G] (default 0), ``epoch`` [T]
        (default 1..T), ``train_acc`` [G, T], ``adjacent_cos`` [G, T],
        ``diverged`` and ``diverged_epoch`` [G] are used when present.
      num_classes: number of classes: chance accuracy ``1/num_classes`` and,
        unless ``chance_loss`` is given, random-guess loss ``ln(num_classes)``.
        Without it (and without ``chance_loss``) the chance tests are skipped.
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: metrics of a random-walk baseline run (``--random-walk``,
        App. M) with ``elr`` [G'] and ``adjacent_cos`` [G', T'] (``seed``
        optional); members whose ELR matches one of its ELRs also get the
        adjacent-cosine test.
      chance_loss: the random-guess loss level, e.g. ``sum(alpha)/2`` for the
        toy function (the mean of ``F`` over the sphere).
      time_unit: what one time index is, for the reasons (``"steps"`` for the toy).

    Returns:
      ``{"members": [{"elr", "seed", "regime", "confidence", "reason"}, ...],
      "transitions": {"1-2": [lo, hi] | None, "2-3": [lo, hi] | None},
      "midpoints": {"1-2": float | None, "2-3": float | None},
      "criteria": {...}}``, JSON-able (the ``regimes.json`` form; see
      :func:`transition_brackets` for the last three).

    Raises:
      UserError: missing or malformed arrays.
    """
    c = criteria if criteria is not None else Criteria()
    if "train_loss" not in metrics:
        raise UserError("metrics have no 'train_loss'; classify needs per-epoch train losses")
    loss = _as_2d(metrics["train_loss"], "train_loss")
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
    acc = _as_2d(metrics["train_acc"], "train_acc") if "train_acc" in metrics else None
    cos = _as_2d(metrics["adjacent_cos"], "adjacent_cos") if "adjacent_cos" in metrics else None
    diverged = np.asarray(metrics.get("diverged", np.zeros(g, bool)), bool).reshape(-1)
    div_epoch = np.asarray(metrics.get("diverged_epoch", np.full(g, -1)), np.int64).reshape(-1)
    chance_acc = 1.0 / num_classes if num_classes else None
    if chance_loss is None and num_classes:
        chance_loss = math.log(num_classes)
    ref = _rw_reference(random_walk, c)
    n = c.window(t)

    members = []
    for i in range(g):
        lw = loss[i, t - n :]
        if diverged[i] or not np.all(np.isfinite(lw)):
            bad = np.flatnonzero(~np.isfinite(loss[i]))
            first = int(div_epoch[i]) if div_epoch.size == g and div_epoch[i] >= 0 else None
            if first is None and bad.size:
                first = int(epoch[bad[0]])
            when = f" at epoch {first}" if first is not None else ""
            regime, conf, reason = 3, 1.0, f"non-finite train loss{when} (diverged)"
        else:
            st = _member_stats(
                loss[i],
                epoch,
                n,
                acc[i] if acc is not None else None,
                cos[i] if cos is not None else None,
                _lookup_rw(ref, float(elr[i]), int(seed[i])) if ref else float("nan"),
                c.trend_quantile,
            )
            regime, conf, reason = _decide(st, c, chance_acc, chance_loss, time_unit)
        members.append(
            {
                "elr": float(elr[i]),
                "seed": int(seed[i]),
                "regime": int(regime),
                "confidence": round(float(min(max(conf, 0.0), 1.0)), 4),
                "reason": reason,
            }
        )
    brackets = transition_brackets(
        [m["elr"] for m in members], [m["regime"] for m in members], [m["seed"] for m in members]
    )
    crit = c.to_dict()
    crit.update(
        chance_acc=chance_acc,
        chance_loss=None if chance_loss is None else float(chance_loss),
        random_walk_reference=bool(ref),
    )
    return {
        "members": members,
        "transitions": brackets["transitions"],
        "midpoints": brackets["midpoints"],
        "criteria": crit,
    }


# --------------------------------------------------------------------------- transitions


def _geo_mid(lo: float, hi: float) -> float:
    return float(math.sqrt(lo * hi))


def transition_brackets(
    elrs: Sequence[float],
    regimes: Sequence[int],
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Brackets of the 1/2 and 2/3 transition ELRs from labelled members.

    Per seed, members are sorted by ELR; every pair of neighbouring ELRs whose
    labels differ is a *change*: ``{1, 2}`` brackets the 1/2 border, ``{2, 3}``
    the 2/3 border, and a direct ``{1, 3}`` jump brackets both (the regime-2
    range lies inside it).  A border's bracket is the union (smallest ``lo``,
    largest ``hi``) of its changes over all seeds, so noisy, non-monotone labels
    widen it rather than being dropped.  Its midpoint estimate is the geometric
    mean of the changes' geometric midpoints ``sqrt(lo * hi)`` (with one change,
    simply ``sqrt(lo * hi)``).  Members with equal labels at every ELR pool
    naturally: their changes coincide.

    Args:
      elrs: ``[G]`` member ELRs (> 0).
      regimes: ``[G]`` labels 1, 2 or 3.
      seeds: ``[G]`` member seeds (default: all one seed).

    Returns:
      ``{"transitions": {"1-2": [lo, hi] | None, "2-3": [lo, hi] | None},
      "midpoints": {"1-2": float | None, "2-3": float | None},
      "changes": [{"seed", "lo", "hi", "from", "to"}, ...]}``; a border
      without a change is ``None``.
    """
    elrs = [float(e) for e in elrs]
    regimes = [int(r) for r in regimes]
    seeds = [0] * len(elrs) if seeds is None else [int(s) for s in seeds]
    if not len(elrs) == len(regimes) == len(seeds):
        raise UserError(
            f"elrs, regimes and seeds differ in length ({len(elrs)}, {len(regimes)}, {len(seeds)})"
        )
    if any(r not in (1, 2, 3) for r in regimes):
        raise UserError(f"regime labels must be 1, 2 or 3, got {sorted(set(regimes))}")
    if any(not (math.isfinite(e) and e > 0) for e in elrs):
        raise UserError("every ELR must be a finite number > 0")
    changes = []
    for s in sorted(set(seeds)):
        pts = sorted((e, r) for e, r, ss in zip(elrs, regimes, seeds, strict=True) if ss == s)
        for (e0, r0), (e1, r1) in zip(pts, pts[1:], strict=False):
            if r0 != r1:
                changes.append({"seed": s, "lo": e0, "hi": e1, "from": r0, "to": r1})
    transitions: dict[str, list[float] | None] = {}
    midpoints: dict[str, float | None] = {}
    for border in BORDERS:
        mine = [ch for ch in changes if {ch["from"], ch["to"]} in _BORDER_PAIRS[border]]
        if not mine:
            transitions[border], midpoints[border] = None, None
            continue
        transitions[border] = [min(ch["lo"] for ch in mine), max(ch["hi"] for ch in mine)]
        mids = [math.log(_geo_mid(ch["lo"], ch["hi"])) for ch in mine]
        midpoints[border] = float(math.exp(sum(mids) / len(mids)))
    return {"transitions": transitions, "midpoints": midpoints, "changes": changes}


# --------------------------------------------------------------------------- directories


def num_classes_of(config: Mapping[str, Any]) -> int:
    """Classes of a run's dataset: 100 for ``cifar100``, else 10."""
    return 100 if config.get("dataset") == "cifar100" else 10


def classify_dir(
    path: str | os.PathLike,
    criteria: Criteria | None = None,
    random_walk: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Classifies every member of a results directory (see :func:`classify`).

    Args:
      path: a results directory (``config.json``, ``metrics.npz``, ``summary.json``).
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: optional results directory of the random-walk baseline
        (``three-regimes sweep --random-walk``) at the same ELRs.

    Returns:
      The :func:`classify` report.

    Raises:
      UserError: ``path`` is not a complete, readable results directory.
    """
    res = load_results(path)
    rw = load_results(random_walk).metrics if random_walk is not None else None
    return classify(
        res.metrics, num_classes=num_classes_of(res.config), criteria=criteria, random_walk=rw
    )


def write_regimes(path: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """Writes ``report`` to ``path/regimes.json`` atomically; returns the file path."""
    out = Path(path) / REGIMES_FILE
    write_json(out, dict(report))
    return out


def _fmt_bracket(b: Iterable[float] | None, mid: float | None) -> str:
    if b is None:
        return "not found"
    lo, hi = b
    return f"[{lo:.3g}, {hi:.3g}] (geometric midpoint {mid:.3g})"


def format_regimes(report: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """Plain-text table of a :func:`classify` report, one row per member.

    Columns: ELR, seed, regime label, confidence, final train loss, test error
    (the last two from ``metrics`` when given) and the reason (last, as it has
    no fixed width), then one line per border.
    """
    loss = test_acc = None
    if metrics is not None:
        loss = _as_2d(metrics["train_loss"], "train_loss") if "train_loss" in metrics else None
        test_acc = _as_2d(metrics["test_acc"], "test_acc") if "test_acc" in metrics else None
    head = f"{'ELR':>10} {'seed':>5} {'label':>5} {'conf':>5} {'train loss':>11} {'test error':>11}"
    lines = [head + "  reason", "-" * (len(head) + 8)]
    for i, m in enumerate(report["members"]):
        tl = f"{loss[i, -1]:>11.4g}" if loss is not None else f"{'-':>11}"
        te = f"{1.0 - test_acc[i, -1]:>11.4f}" if test_acc is not None else f"{'-':>11}"
        lines.append(
            f"{m['elr']:>10.3g} {m['seed']:>5d} {m['regime']:>5d} {m['confidence']:>5.2f} "
            f"{tl} {te}  {m['reason']}"
        )
    mids = report.get("midpoints", {})
    for border in BORDERS:
        lines.append(
            f"transition {border}: {_fmt_bracket(report['transitions'][border], mids.get(border))}"
        )
    return "\n".join(lines)


def run_regimes_command(
    path: str | os.PathLike,
    criteria: Criteria | None = None,
    random_walk: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], str]:
    """``three-regimes regimes DIR``: classify, write ``DIR/regimes.json``, make the table.

    Args:
      path: results directory.
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: optional random-walk baseline results directory.

    Returns:
      ``(report, table_text)``.

    Raises:
      UserError: ``path`` is not a complete, readable results directory.
    """
    res = load_results(path)
    rw = load_results(random_walk).metrics if random_walk is not None else None
    report = classify(
        res.metrics, num_classes=num_classes_of(res.config), criteria=criteria, random_walk=rw
    )
    write_regimes(path, report)
    return report, format_regimes(report, res.metrics)


__all__ = [
    "BORDERS",
    "REGIMES_FILE",
    "Criteria",
    "classify",
    "classify_dir",
    "format_regimes",
    "num_classes_of",
    "run_regimes_command",
    "trend_slope",
    "transition_brackets",
    "write_regimes",
]
