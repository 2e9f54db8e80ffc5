"""Closed-form theory of the toy function (Sec. 3 of the paper); numpy only, no JAX.

For ``F(x, y) = sum_i alpha_i * x_i**2 / (x_i**2 + y_i**2)`` trained on the unit
sphere at a fixed ELR (simulated by :mod:`three_regimes_jax.studies.toy`, which
re-exports every name here):

* :func:`convergence_threshold` -- ``1 / sum(alpha)`` (eq. 8): below it the run
  converges to ``F = 0`` (regime 1).
* :func:`equilibrium_group_elr` -- the individual ELRs at equilibrium (eq. 9).
* :func:`single_group_level`, :func:`single_group_r2` -- Prop. 1 (one group).
* :func:`regime2_level` -- the level ``F`` stabilises at above the threshold
  (equality case of eq. 25).
* :func:`predicted_regime` -- 1 below the threshold, 2 above.
* :func:`toy_chance_loss` -- the random-guess level ``sum(alpha) / 2``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from three_regimes_jax.errors import UserError

ArrayLike = Any

# --------------------------------------------------------------------------- validation


def _float_list(values: ArrayLike, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a list of numbers, got {values!r}") from None
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise UserError(f"{what} must be a flat list of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise UserError(f"{what} is empty; give at least one value, e.g. 1,2,4")
    return arr


def validate_alphas(alphas: ArrayLike) -> np.ndarray:
    """Checks the group weights ``alpha_i`` (non-empty, finite, > 0); returns float64 [n]."""
    arr = _float_list(alphas, "alphas")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise UserError(f"alphas must all be finite and > 0, got {arr.tolist()}")
    return arr


def validate_elrs(elrs: ArrayLike) -> np.ndarray:
    """Checks the ELRs (non-empty, finite, > 0); returns float64 [E]."""
    arr = _float_list(elrs, "elrs")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise UserError(f"elrs must all be finite and > 0, got {arr.tolist()}")
    return arr


# --------------------------------------------------------------------------- theory


def convergence_threshold(alphas: ArrayLike) -> float:
    """ELR threshold ``1 / sum_i alpha_i`` between regimes 1 and 2 (eq. 8).

    Below it projected GD converges to the minimum ``F = 0``; above it the
    minimum is unstable and ``F`` stays away from 0.  For ``alpha = (1, 2, 4)``
    it is ``1/7``.
    """
    return float(1.0 / np.sum(validate_alphas(alphas)))


def equilibrium_group_elr(alphas: ArrayLike, elr: float) -> np.ndarray:
    """Individual ELRs at equilibrium, ``elr * sum_j alpha_j / alpha_i`` (eq. 9).

    Above the threshold the group norms settle so that every group has the same
    ``alpha_i * elr_i = elr * sum_j alpha_j`` (the Prop. 1 variable of each
    group alone).  For ``alpha = (1, 2, 4)`` and ELR 0.2 it is
    ``(1.4, 0.7, 0.35)``.

    Returns:
      float64 ``[n]``.
    """
    a = validate_alphas(alphas)
    elr = float(validate_elrs([elr])[0])
    return elr * np.sum(a) / a


def single_group_level(alpha: float, elr: float) -> float:
    """Prop. 1: the level a single group's ``F = alpha x^2/(x^2+y^2)`` settles at.

    ``(alpha - 1/elr) / 2`` for ``elr > 1/alpha``, reached as a stable 2-cycle
    ``x -> -x`` (the iterate bounces across the minimum at a fixed angle);
    ``0.0`` for ``elr <= 1/alpha`` (convergence to the minimum).
    For ``alpha = 2``, ELR 1 it is ``0.5``.
    """
    alpha = float(validate_alphas([alpha])[0])
    elr = float(validate_elrs([elr])[0])
    return (alpha - 1.0 / elr) / 2.0 if alpha * elr > 1.0 else 0.0


def single_group_r2(alpha: float, elr: float) -> float:
    """Prop. 1: ``x^2 / y^2`` on the 2-cycle, ``(alpha*elr - 1) / (alpha*elr + 1)``.

    Equivalently ``cos(2 phi) = 1 / (alpha * elr)`` for the angle ``phi`` from
    the minimum; ``alpha * r2 / (1 + r2)`` is :func:`single_group_level`.
    ``0.0`` for ``elr <= 1/alpha``.
    """
    alpha = float(validate_alphas([alpha])[0])
    elr = float(validate_elrs([elr])[0])
    c = alpha * elr
    return (c - 1.0) / (c + 1.0) if c > 1.0 else 0.0


def regime2_level(alphas: ArrayLike, elr: float) -> float:
    """Level of ``F`` above the threshold, ``(sum_i alpha_i - 1/elr) / 2`` (eq. 25, equality).

    Each group sits at its Prop. 1 level with its equilibrium individual ELR
    (eq. 9); summed over groups this gives the formula.  ``0.0`` at or below the
    threshold (eq. 8).  For ``n = 1`` it equals :func:`single_group_level`.
    For ``alpha = (1, 2, 4)`` and ELR 0.2 it is ``(7 - 5) / 2 = 1``.
    """
    a = validate_alphas(alphas)
    elr = float(validate_elrs([elr])[0])
    total = float(np.sum(a))
    return (total - 1.0 / elr) / 2.0 if elr * total > 1.0 else 0.0


def predicted_regime(alphas: ArrayLike, elr: float) -> int:
    """Regime predicted by the closed-form theory: 1 if ``elr < 1/sum(alpha)`` (eq. 8), else 2.

    The theory never returns 3 on the toy, on purpose: eqs. 8-9, Prop. 1 and
    eq. 25 give only one border, and the regime-2 level ``(sum(alpha) - 1/elr) / 2``
    reaches the random-guess level ``sum(alpha) / 2`` only as ``elr -> inf``.
    Above about ``elr * sum(alpha) ~ 1.75`` the simulated ``F`` no longer
    settles but fluctuates chaotically, its time average still on the eq. 25
    level: still regime 2.  See ``docs/REGIMES.md`` ("Regimes on the toy") for
    the measurements and the linearisation.

    Returns:
      1 or 2.
    """
    return 1 if float(validate_elrs([elr])[0]) < convergence_threshold(alphas) else 2


def toy_chance_loss(alphas: ArrayLike) -> float:
    """The toy's random-guess level: the mean of ``F`` over the sphere, ``sum(alpha) / 2``.

    Each ``x_i^2 / (x_i^2 + y_i^2)`` of a uniform point on the sphere has mean 1/2.
    """
    return float(np.sum(validate_alphas(alphas))) / 2.0


__all__ = [
    "convergence_threshold",
    "equilibrium_group_elr",
    "predicted_regime",
    "regime2_level",
    "single_group_level",
    "single_group_r2",
    "toy_chance_loss",
    "validate_alphas",
    "validate_elrs",
]
