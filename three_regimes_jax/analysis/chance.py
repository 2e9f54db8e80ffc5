"""The regime-3 evidence: is a member's state a random walk at chance level?

Regime 3 (divergence) is a random-walk-like state (paper Sec. 5.2, App. M):
train accuracy at chance and the weights of adjacent iterations decorrelated
like a random walk's.  :func:`random_walk_evidence` combines the tests of one
member's window statistics:

- **deciding** tests, all of which must fire: the train accuracy near chance
  (:func:`accuracy_test`) whenever it is measured, and every available cosine
  test: ``step_cos`` (:func:`step_cos_test`: below an absolute level and, with
  a random-walk reference run, near its) and ``adjacent_cos`` against a
  reference (:func:`cosine_test`);
- the **supporting** loss test (:func:`chance_loss_test`): a mean loss near
  the random-guess level raises the confidence, one below it halves it, and it
  never decides on its own, since with the frozen norm-10 head the real
  random-guess loss lies far above ``ln C`` while high regime-2 ELRs reach
  losses of 1-2.5.  Only where nothing else exists (the toy, whose random
  level ``sum(alpha)/2`` is exact and which has no accuracy) it decides.

``docs/REGIMES.md`` gives the thresholds and their calibration.  numpy only.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from three_regimes_jax.analysis.criteria import Criteria
from three_regimes_jax.analysis.stats import WindowStats


def squash(margin: float) -> float:
    """Margin in natural units -> confidence in [0, 1)."""
    if not np.isfinite(margin):
        return 1.0
    return float(np.tanh(max(margin, 0.0)))


@dataclasses.dataclass(frozen=True)
class Test:
    """Outcome of one test: whether it fires, its margin confidence, what it measured."""

    fires: bool
    confidence: float
    text: str


def accuracy_test(st: WindowStats, c: Criteria, chance_acc: float | None, win: str) -> Test | None:
    """Mean train accuracy below ``chance + chance_margin`` (None: not available)."""
    if chance_acc is None or not np.isfinite(st.mean_acc):
        return None
    thr = chance_acc + c.chance_margin
    fires = bool(st.mean_acc < thr)
    conf = squash(abs(st.mean_acc - thr) / c.chance_margin)
    where = f"~ chance {chance_acc:.3g}" if fires else f"above chance {chance_acc:.3g}"
    return Test(fires, conf, f"train acc {st.mean_acc:.3g} over {win} {where}")


def chance_loss_test(
    st: WindowStats, c: Criteria, chance_loss: float | None, win: str
) -> Test | None:
    """Mean train loss at least ``chance_loss_frac`` x the random-guess loss (None: n/a)."""
    if chance_loss is None or not chance_loss > 0 or not np.isfinite(st.mean_loss):
        return None
    thr = c.chance_loss_frac * chance_loss
    unit = chance_loss * max(abs(1.0 - c.chance_loss_frac), 0.1)
    fires = bool(st.mean_loss >= thr)
    conf = squash(abs(st.mean_loss - thr) / unit)
    text = (
        f"mean train loss {st.mean_loss:.3g} over {win} {'>=' if fires else '<'} "
        f"{c.chance_loss_frac:g} x random-guess loss {chance_loss:.3g}"
    )
    return Test(fires, conf, text)


def cosine_test(st: WindowStats, c: Criteria) -> Test | None:
    """Mean ``adjacent_cos`` at most the random walk's ``+ cos_margin`` (None: no reference)."""
    if not (np.isfinite(st.mean_cos) and np.isfinite(st.rw_cos)):
        return None
    thr = st.rw_cos + c.cos_margin
    fires = bool(st.mean_cos <= thr)
    conf = squash(abs(st.mean_cos - thr) / c.cos_margin)
    where = "~" if fires else "above"
    text = f"adjacent-epoch cosine {st.mean_cos:.3g} {where} random walk {st.rw_cos:.3g}"
    return Test(fires, conf, text)


def step_cos_test(st: WindowStats, c: Criteria) -> Test | None:
    """Mean ``step_cos`` random-walk-like (None: no ``step_cos``).

    At most ``step_cos_max`` (the weights of adjacent iterations decorrelated;
    unit: the distance from the threshold to the nearer end of [0, 1]) and,
    with a random-walk reference, at most the reference's ``+ cos_margin``
    too (unit ``cos_margin`` when that is the tighter bound): a reference can
    only tighten the test, never accept correlated steps.
    """
    if not np.isfinite(st.mean_step_cos):
        return None
    thr = c.step_cos_max
    unit = max(min(thr, 1.0 - thr), c.cos_margin)
    ref = f"random-walk-like level {thr:g}"
    if np.isfinite(st.rw_step_cos) and st.rw_step_cos + c.cos_margin < thr:
        thr, unit = st.rw_step_cos + c.cos_margin, c.cos_margin
        ref = f"random walk {st.rw_step_cos:.3g} + {c.cos_margin:g}"
    fires = bool(st.mean_step_cos <= thr)
    conf = squash(abs(st.mean_step_cos - thr) / unit)
    where = "<=" if fires else ">"
    return Test(fires, conf, f"step cosine {st.mean_step_cos:.3g} {where} {ref}")


@dataclasses.dataclass(frozen=True)
class Evidence:
    """The combined regime-3 evidence of one member.

    Attributes:
      fires: every deciding test fires (regime 3 unless the loss falls steadily).
      confidence: of regime 3 if ``fires``, else of "not regime 3" (0.5
        without any deciding test).
      text: the reason: the tests behind regime 3, or, when some test fired
        but the label is not 3, why not (empty when nothing points to 3).
      available: whether any deciding test could be made.
    """

    fires: bool
    confidence: float
    text: str
    available: bool


def random_walk_evidence(
    st: WindowStats,
    c: Criteria,
    chance_acc: float | None,
    chance_loss: float | None,
    win: str,
    loss_decides: bool = False,
) -> Evidence:
    """Whether a member's window looks like a random walk at chance level (regime 3).

    Regime 3 needs every deciding test to fire, so its confidence is the
    smallest of theirs, then moved by the supporting loss test; "not 3" needs
    one to fail, so it takes the largest confidence of the failing ones.

    Args:
      st: the member's window statistics.
      c: thresholds.
      chance_acc: chance accuracy ``1/num_classes`` (None: unknown).
      chance_loss: random-guess loss level (None: unknown).
      win: the window's description, for the reason.
      loss_decides: the loss test decides instead of the accuracy (the toy:
        no accuracy, an exact random level).
    """
    acc = accuracy_test(st, c, chance_acc, win)
    loss = chance_loss_test(st, c, chance_loss, win)
    cosines = [t for t in (step_cos_test(st, c), cosine_test(st, c)) if t is not None]
    primary = [acc] if acc is not None else []
    if not primary and loss_decides and loss is not None:
        primary, loss = [loss], None
    deciding = primary + cosines
    if not deciding:
        return Evidence(False, 0.5, "", False)
    failed = [t for t in deciding if not t.fires]
    if not failed:
        conf = min(t.confidence for t in deciding)
        texts = [t.text for t in deciding]
        if loss is not None and loss.fires:
            conf = 1.0 - (1.0 - conf) * (1.0 - 0.5 * loss.confidence)
            texts.append(loss.text)
        elif loss is not None:
            conf *= 0.5
            texts.append(f"yet {loss.text}")
        return Evidence(True, conf, "; ".join(texts) + " (random-walk-like)", True)
    fired = [t for t in deciding if t.fires]
    if loss is not None and loss.fires:
        fired.append(loss)
    text = ""
    if fired:
        text = (
            "; ".join(t.text for t in fired)
            + ", but "
            + "; ".join(t.text for t in failed)
            + ": not a random walk"
        )
    return Evidence(False, max(t.confidence for t in failed), text, True)


__all__ = [
    "Evidence",
    "Test",
    "accuracy_test",
    "chance_loss_test",
    "cosine_test",
    "random_walk_evidence",
    "squash",
    "step_cos_test",
]
