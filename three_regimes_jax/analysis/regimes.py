"""Regime classification of trained grids: the rule, its thresholds and :func:`classify`.

A scale-invariant network trained on the sphere at a fixed ELR ends in one of
three regimes (Kodryan et al., NeurIPS 2022): (1) convergence, (2) chaotic
equilibrium, (3) divergence, a random-walk-like state.  :func:`classify` labels
every member from its last trained epochs (the start entry of newer results,
epoch 0, is left out) with explicit thresholds (:class:`Criteria`) and a
margin-based confidence: non-finite loss -> 3; train accuracy at chance and
the weights of adjacent iterations decorrelated like a random walk's
(:mod:`three_regimes_jax.analysis.chance`; the loss level only supports it) and
the loss does not fall steadily -> 3; loss below ``converged_loss``, low and
falling, or falling steadily -> 1; else 2.  ``docs/REGIMES.md`` explains the
rule, its confidences and how the defaults were calibrated.  numpy only (the
plotting package uses it); directories are read and written by
:mod:`three_regimes_jax.analysis.report`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from three_regimes_jax.analysis.borders import BORDERS, transition_brackets
from three_regimes_jax.analysis.chance import random_walk_evidence, squash
from three_regimes_jax.analysis.criteria import Criteria
from three_regimes_jax.analysis.stats import (
    LOG_FLOOR,
    WindowStats,
    lookup_rw,
    member_stats,
    read_curves,
    rw_reference,
    trend_slope,
)

#: A decision: regime label, confidence in [0, 1] and the reason.
Label = tuple[int, float, str]


# --------------------------------------------------------------------------- decision


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
        d_low=squash(abs(math.log10(max(st.median_loss, LOG_FLOOR) / c.low_loss))),
        falling=bool(np.isfinite(st.slope) and st.slope <= c.falling_slope),
        d_fall=squash(abs(st.slope - c.falling_slope) / unit) if np.isfinite(st.slope) else 0.5,
    )


def _diverged(loss: np.ndarray, epoch: np.ndarray, first: int | None) -> Label:
    """Regime 3, confidence 1: a non-finite loss (``first``: the recorded divergence epoch)."""
    bad = np.flatnonzero(~np.isfinite(loss))
    if first is None and bad.size:
        first = int(epoch[bad[0]])
    when = f" at epoch {first}" if first is not None else ""
    return 3, 1.0, f"non-finite train loss{when} (diverged)"


def _converged(st: WindowStats, c: Criteria, sh: _Shape, not3: float) -> Label | None:
    """Regime 1 below the float floor ``converged_loss`` (confidence at least 0.5)."""
    if not st.median_loss < c.converged_loss:
        return None
    conf = squash(math.log10(c.converged_loss / max(st.median_loss, LOG_FLOOR)))
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
    loss_decides: bool = False,
) -> Label:
    """Label, confidence and reason of one finite member (see ``docs/REGIMES.md``)."""
    win = f"last {st.window} {time_unit}"
    ev = random_walk_evidence(st, c, chance_acc, chance_loss, win, loss_decides)
    steady = _is_steady(st, c)
    if ev.fires and not steady:
        return 3, ev.confidence, ev.text
    note, not3 = "", ev.confidence  # 0.5 without any deciding test: cannot rule out 3
    if ev.fires:  # at chance level but falling steadily: still training, not a random walk
        note = (
            f"; near chance but falling in {st.falling_frac:.0%} of {time_unit}: not a random walk"
        )
        not3 = 0.25
    elif ev.text:
        note = f"; {ev.text}"
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
        (default 1..T), ``train_acc`` [G, T], ``step_cos`` [G, T],
        ``adjacent_cos`` [G, T], ``diverged`` and ``diverged_epoch`` [G] are
        used when present.  A start entry (epoch 0, see
        :func:`~three_regimes_jax.analysis.stats.start_offset`) is left out.
      num_classes: number of classes: chance accuracy ``1/num_classes`` and,
        unless ``chance_loss`` is given, random-guess loss ``ln(num_classes)``
        (a supporting test only).  Without it the accuracy test is skipped.
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: metrics of a random-walk baseline run (``--random-walk``,
        App. M) with ``elr`` [G'] and ``step_cos`` and/or ``adjacent_cos``
        [G', T'] (``seed`` optional); members whose ELR matches one of its
        ELRs compare their cosines with its.
      chance_loss: the random-guess loss level, e.g. ``sum(alpha)/2`` for the
        toy function (the mean of ``F`` over the sphere).  Given without
        ``num_classes`` (the toy: no accuracy), the loss test decides regime
        3; otherwise it only supports it.
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
    loss_decides = chance_loss is not None and not num_classes
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
            rw = lookup_rw(ref, float(cv.elr[i]), int(cv.seed[i]))
            st = member_stats(cv, i, n, rw, c.trend_quantile)
            regime, conf, reason = _decide(st, c, chance_acc, chance_loss, time_unit, loss_decides)
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
        loss_decides=loss_decides,
        start_entry=cv.start,
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
