"""The thresholds of the regime classification (:class:`Criteria`).

``docs/REGIMES.md`` gives the rule they enter and, for every threshold, the
values measured on real runs that its default was chosen from.  numpy only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from three_regimes_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Criteria:
    """Thresholds of :func:`~three_regimes_jax.analysis.regimes.classify`.

    ``docs/REGIMES.md`` gives the rule and, for every threshold, the values
    measured on real MLP-SI runs (MNIST, 20 epochs, ELRs 1e-4..1; the 8x8
    digits, 40 and 60 epochs, ELRs 1e-3..1) that its default was chosen from.

    Attributes:
      last_frac: the window is the last ``ceil(last_frac * T)`` trained epochs.
      min_window: but at least this many epochs (capped at ``T``).
      chance_margin: accuracy at chance (required for regime 3) if the mean
        train accuracy is below ``1/num_classes + chance_margin``.
      chance_loss_frac: the loss supports regime 3 if its mean is at least
        this fraction of the random-guess loss (it decides only on the toy,
        which has no accuracy).
      low_loss: regime 1 needs the median train loss below it, unless the loss
        falls steadily.
      converged_loss: a median train loss below this is regime 1 whatever the slope.
      falling_slope: regime 1 needs the trend slope (per decade of epochs) at
        most this.
      trend_quantile: the quantile the trend slope follows.
      plateau_slope: a regime-2 loss with ``|slope| <= plateau_slope`` is flat;
        one falling faster gets half the confidence (it may converge later).
      steady_frac: a loss falling in at least this fraction of the window's
        epochs, with a slope ``<= falling_slope``, is still training: regime 3
        is vetoed.
      cos_margin: with a random-walk reference, the cosines (``step_cos``,
        ``adjacent_cos``) are random-walk-like if at most the reference's
        ``+ cos_margin`` (``step_cos`` also at most ``step_cos_max``).
      step_cos_max: the mean ``step_cos`` (cosine between the weights of
        adjacent iterations) is random-walk-like if at most this.
    """

    last_frac: float = 0.5
    min_window: int = 5
    chance_margin: float = 0.2
    chance_loss_frac: float = 0.9
    low_loss: float = 0.05
    converged_loss: float = 1e-4
    falling_slope: float = -0.25
    trend_quantile: float = 0.25
    plateau_slope: float = 0.25
    steady_frac: float = 0.8
    cos_margin: float = 0.1
    step_cos_max: float = 0.5

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
            ("step_cos_max", 0.0 < self.step_cos_max < 1.0, "in (0, 1)"),
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
        """Number of last epochs the statistics use for a run of ``t`` trained epochs."""
        return max(1, min(t, max(self.min_window, math.ceil(self.last_frac * t))))


__all__ = ["Criteria"]
