"""Regime classification of trained grids: the rule, its thresholds and :func:`classify`.

A scale-invariant network trained on the sphere at a fixed ELR ends in one of
three regimes (Kodryan et al., NeurIPS 2022): (1) convergence, (2) chaotic
equilibrium, (3) divergence, a random-walk-like state.  :func:`classify` labels
every member from its last epochs with explicit thresholds (:class:`Criteria`)
and a margin-based confidence: non-finite loss -> 3; a chance test fires
(accuracy near chance, loss near the random-guess level, adjacent-epoch cosine
near a random walk's) and the loss does not fall steadily -> 3; loss below
``converged_loss``, low and falling, or falling steadily -> 1; else 2.
``docs/REGIMES.md`` explains the rule, its confidences and how the defaults were
calibrated.  numpy only (the plotting package uses it); directories are read and
written by :mod:`three_regimes_jax.analysis.report`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from three_regimes_jax.analysis.borders import BORDERS, transition_brackets
from three_regimes_jax.analysis.stats import (
    LOG_FLOOR,
    WindowStats,
    lookup_rw,
    member_stats,
    read_curves,
    rw_reference,
    trend_slope,
)
from three_regimes_jax.errors import UserError

#: A decision: regime label, confidence in [0, 1] and the reason.
Label = tuple[int, float, str]


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Thresholds of :func:`classify`.

    ``docs/REGIMES.md`` gives the rule and, for every threshold, the values
    measured on real MLP-SI runs (MNIST, 20 epochs, ELRs 1e-4..1; the 8x8
    digits, 40 and 60 epochs, ELRs 1e-3..1) that its default was chosen from.

    Attributes:
      last_frac: the window is the last ``ceil(last_frac * T)`` epochs.
      min_window: but at least this many epochs (capped at ``T``).
      chance_margin: regime 3 if the mean train accuracy is below
        ``1/num_classes + chance_margin``.
      chance_loss_frac: regime 3 if the mean train loss is at least this
        fraction of the random-guess loss.
      low_loss: regime 1 needs the median train loss below it, unless the loss
        falls steadily.
      converged_loss: a median train loss below this is regime 1 whatever the slope.
      falling_slope: regime 1 needs the :func:`trend_slope` (per decade of
        epochs) at most this.
      trend_quantile: the quantile :func:`trend_slope` follows.
      plateau_slope: a regime-2 loss with ``|slope| <= plateau_slope`` is flat;
        one falling faster gets half the confidence (it may converge later).
      steady_frac: a loss falling in at least this fraction of the window's
        epochs, with a slope ``<= falling_slope``, is still training: the
        chance tests are vetoed.
      cos_margin: with a random-walk reference, regime 3 if the mean
        ``adjacent_cos`` is at most the reference's ``+ cos_margin``.
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


# --------------------------------------------------------------------------- decision


def _squash(margin: float) -> float:
    """Margin in natural units -> confidence in [0, 1)."""
    if not np.isfinite(margin):
        return 1.0
    return float(np.tanh(max(margin, 0.0)))


@dataclasses.dataclass(frozen=True)
class _Test:
    """Outcome of one chance test: whether it fires, its margin confidence, its reason."""

    fires: bool
    confidence: float
    text: str


def _accuracy_test(
    st: WindowStats, c: Criteria, chance_acc: float | None, win: str
) -> _Test | None:
    """Mean train accuracy below ``chance + chance_margin`` (None: not available)."""
    if chance_acc is None or not np.isfinite(st.mean_acc):
        return None
    thr = chance_acc + c.chance_margin
    conf = _squash(abs(st.mean_acc - thr) / c.chance_margin)
    text = f"train acc {st.mean_acc:.3g} over {win} ~ chance {chance_acc:.3g}"
    return _Test(bool(st.mean_acc < thr), conf, text)


def _chance_loss_test(
    st: WindowStats, c: Criteria, chance_loss: float | None, win: str
) -> _Test | None:
    """Mean train loss at least ``chance_loss_frac`` x the random-guess loss (None: n/a)."""
    if chance_loss is None or not chance_loss > 0 or not np.isfinite(st.mean_loss):
        return None
    thr = c.chance_loss_frac * chance_loss
    unit = chance_loss * max(abs(1.0 - c.chance_loss_frac), 0.1)
    conf = _squash(abs(st.mean_loss - thr) / unit)
    text = (
        f"mean train loss {st.mean_loss:.3g} over {win} >= "
        f"{c.chance_loss_frac:g} x random-guess loss {chance_loss:.3g}"
    )
    return _Test(bool(st.mean_loss >= thr), conf, text)


def _cosine_test(st: WindowStats, c: Criteria) -> _Test | None:
    """Mean ``adjacent_cos`` at most the random walk's ``+ cos_margin`` (None: no reference)."""
    if not (np.isfinite(st.mean_cos) and np.isfinite(st.rw_cos)):
        return None
    thr = st.rw_cos + c.cos_margin
    conf = _squash(abs(st.mean_cos - thr) / c.cos_margin)
    text = f"adjacent-epoch cosine {st.mean_cos:.3g} ~ random walk {st.rw_cos:.3g}"
    return _Test(bool(st.mean_cos <= thr), conf, text)


def _is_steady(st: WindowStats, c: Criteria) -> bool:
    """The loss falls in at least ``steady_frac`` of the window, with a falling slope."""
    return bool(
        st.falling_frac >= c.steady_frac and np.isfinite(st.slope) and st.slope <= c.falling_slope
    )


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The loss level and trend against the regime-1 tests, with their margin confidences."""

    level: str  # "median train loss ... over last N epochs"
    slope: str  # "slope -0.50/decade" or "slope n/a"
    low: bool  # median loss < low_loss
    d_low: float
    falling: bool  # slope <= falling_slope
    d_fall: float


def _shape(st: WindowStats, c: Criteria, win: str) -> _Shape:
    """Level and trend of the window against ``low_loss`` and ``falling_slope``."""
    unit = max(abs(c.falling_slope), st.slope_noise if np.isfinite(st.slope_noise) else 0.0)
    return _Shape(
        level=f"median train loss {st.median_loss:.3g} over {win}",
        slope=f"slope {st.slope:+.2f}/decade" if np.isfinite(st.slope) else "slope n/a",
        low=bool(st.median_loss < c.low_loss),
        d_low=_squash(abs(math.log10(max(st.median_loss, LOG_FLOOR) / c.low_loss))),
        falling=bool(np.isfinite(st.slope) and st.slope <= c.falling_slope),
        d_fall=_squash(abs(st.slope - c.falling_slope) / unit) if np.isfinite(st.slope) else 0.5,
    )


def _diverged(loss: np.ndarray, epoch: np.ndarray, first: int | None) -> Label:
    """Regime 3, confidence 1: a non-finite loss (``first``: the recorded divergence epoch)."""
    bad = np.flatnonzero(~np.isfinite(loss))
    if first is None and bad.size:
        first = int(epoch[bad[0]])
    when = f" at epoch {first}" if first is not None else ""
    return 3, 1.0, f"non-finite train loss{when} (diverged)"


def _random_walk_like(fired: list[_Test]) -> Label:
    """Regime 3: the strongest firing test's confidence; every firing test in the reason."""
    fired = sorted(fired, key=lambda t: -t.confidence)
    return 3, fired[0].confidence, "; ".join(t.text for t in fired) + " (random-walk-like)"


def _converged(st: WindowStats, c: Criteria, sh: _Shape, not3: float) -> Label | None:
    """Regime 1 below the float floor ``converged_loss`` (confidence at least 0.5)."""
    if not st.median_loss < c.converged_loss:
        return None
    conf = _squash(math.log10(c.converged_loss / max(st.median_loss, LOG_FLOOR)))
    conf = max(conf, 0.5)  # below the floor is convergence in itself
    return 1, min(conf, not3), f"{sh.level} < {c.converged_loss:g}: converged"


def _converging(
    st: WindowStats, c: Criteria, sh: _Shape, not3: float, steady: bool, note: str, unit: str
) -> Label | None:
    """Regime 1 when low and falling, or (half confidence) falling steadily above ``low_loss``."""
    if sh.low and sh.falling:
        return (
            1,
            min(sh.d_low, sh.d_fall, not3),
            f"{sh.level} < {c.low_loss:g} and falling ({sh.slope})",
        )
    if sh.falling and steady:
        # Slow convergence (small ELR, few epochs): still descending steadily, just
        # not low yet; a plateau (regime 2) is flat or noisy, not steadily falling.
        return (
            1,
            0.5 * min(sh.d_fall, not3),
            f"{sh.level} above {c.low_loss:g} but falling steadily ({sh.slope}, in "
            f"{st.falling_frac:.0%} of {unit}): still converging{note}",
        )
    return None


def _equilibrium(st: WindowStats, c: Criteria, sh: _Shape, not3: float, note: str) -> Label:
    """Regime 2 ("not 3 and not 1"), halved while the loss is still clearly falling."""
    not1 = max(d for d, ok in ((sh.d_low, sh.low), (sh.d_fall, sh.falling)) if not ok)
    conf = min(not3, not1)
    if np.isfinite(st.slope) and st.slope < -c.plateau_slope:
        conf *= 0.5
        shape = f"still falling ({sh.slope}) but above {c.low_loss:g}: may converge later"
        if sh.low:
            shape = f"falling too slowly ({sh.slope} > {c.falling_slope:g})"
    elif np.isfinite(st.slope) and st.slope > c.plateau_slope:
        shape = f"rising ({sh.slope})"
    else:
        shape = f"flat ({sh.slope})"
    if note:
        return 2, conf, f"{sh.level}, {shape}{note}"
    return 2, conf, f"{sh.level}, {shape}; away from chance (equilibrium)"


def _decide(
    st: WindowStats,
    c: Criteria,
    chance_acc: float | None,
    chance_loss: float | None,
    time_unit: str = "epochs",
) -> Label:
    """Label, confidence and reason of one finite member (see ``docs/REGIMES.md``)."""
    win = f"last {st.window} {time_unit}"
    tests = [
        _accuracy_test(st, c, chance_acc, win),
        _chance_loss_test(st, c, chance_loss, win),
        _cosine_test(st, c),
    ]
    fired = [t for t in tests if t is not None and t.fires]
    passed = [t.confidence for t in tests if t is not None and not t.fires]
    steady = _is_steady(st, c)
    if fired and not steady:
        return _random_walk_like(fired)
    note = ""
    if fired:  # at chance level but falling steadily: still training, not a random walk
        note = (
            f"; near chance but falling in {st.falling_frac:.0%} of {time_unit}: not a random walk"
        )
        passed.append(0.25)
    not3 = min(passed) if passed else 0.5  # no chance test available: cannot rule out 3
    sh = _shape(st, c, win)
    return (
        _converged(st, c, sh, not3)
        or _converging(st, c, sh, not3, steady, note, time_unit)
        or _equilibrium(st, c, sh, not3, note)
    )


# --------------------------------------------------------------------------- classification


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
    cv = read_curves(metrics)
    g, t = cv.loss.shape
    chance_acc = 1.0 / num_classes if num_classes else None
    if chance_loss is None and num_classes:
        chance_loss = math.log(num_classes)
    ref = rw_reference(random_walk, c.window)
    n = c.window(t)

    members = []
    for i in range(g):
        if cv.diverged[i] or not np.all(np.isfinite(cv.loss[i, t - n :])):
            recorded = cv.diverged_epoch.size == g and cv.diverged_epoch[i] >= 0
            regime, conf, reason = _diverged(
                cv.loss[i], cv.epoch, int(cv.diverged_epoch[i]) if recorded else None
            )
        else:
            st = member_stats(
                cv.loss[i],
                cv.epoch,
                n,
                cv.acc[i] if cv.acc is not None else None,
                cv.cos[i] if cv.cos is not None else None,
                lookup_rw(ref, float(cv.elr[i]), int(cv.seed[i])) if ref else float("nan"),
                c.trend_quantile,
            )
            regime, conf, reason = _decide(st, c, chance_acc, chance_loss, time_unit)
        members.append(
            {
                "elr": float(cv.elr[i]),
                "seed": int(cv.seed[i]),
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


__all__ = [
    "BORDERS",
    "Criteria",
    "Label",
    "classify",
    "transition_brackets",
    "trend_slope",
]
