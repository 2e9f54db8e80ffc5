"""The paper's toy function with ``n`` scale-invariant groups, trained on the unit sphere.

The paper's toy example is::

    F(x, y) = sum_i alpha_i * x_i**2 / (x_i**2 + y_i**2),      alpha_i > 0,

a function of ``n`` pairs ``(x_i, y_i)``.  Each pair is scale-invariant on its
own, so each pair is one SI group (one pytree leaf of shape ``[2]``).  The joint
vector ``(x_1, y_1, ..., x_n, y_n)`` lives on the unit sphere of ``R^{2n}`` and is
trained by full-batch, deterministic projected gradient descent at a fixed
effective learning rate (ELR) with :func:`three_regimes_jax.sphere.sphere_sgd`
(radius 1, so ``lr = elr``).  The minimum ``F = 0`` is reached at ``x = 0``.

This module holds the simulator (:func:`run_toy`) and the closed-form theory:

* :func:`convergence_threshold` -- ``1 / sum(alpha)`` (eq. 8): below it the run
  converges to ``F = 0`` (regime 1).
* :func:`equilibrium_group_elr` -- the individual ELRs at equilibrium (eq. 9).
* :func:`single_group_level`, :func:`single_group_r2` -- Prop. 1 (one group).
* :func:`regime2_level` -- the level ``F`` stabilises at above the threshold
  (equality case of eq. 25).
* :func:`predicted_regime` -- 1 below the threshold, 2 above (see its docstring
  for why the closed-form theory never says 3 on the toy).

:func:`observed_regime` classifies a simulated trajectory by a simple
documented rule, to compare with the theory.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from three_regimes_jax.errors import UserError
from three_regimes_jax.sphere import elr_to_lr, group_stats, sphere_sgd

ArrayLike = Any

#: ``observed_regime`` codes and what they mean (also written to summary.json).
OBSERVED_REGIME_CODES: dict[int, str] = {
    0: "undetermined: F is tiny or still decaying but not yet < 1e-6; run more steps",
    1: "converged: final F < 1e-6",
    2: "settled: std of F over the second half <= 5% of its mean",
    3: "not settled: F fluctuates (std > 5% of its mean over the second half)",
}

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


def _validate_int(value: Any, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UserError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise UserError(f"{what} must be {bound}, got {value}")
    return value


def validate_run_args(
    alphas: ArrayLike, elrs: ArrayLike, steps: Any, seed: Any, starts: Any
) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """Validates every argument of :func:`run_toy`; raises :class:`UserError`.

    Returns:
      ``(alphas, elrs, steps, seed, starts)`` as float64 arrays and Python ints.
    """
    return (
        validate_alphas(alphas),
        validate_elrs(elrs),
        _validate_int(steps, "steps", 1),
        _validate_int(seed, "seed", 0, 2**32 - 1),
        _validate_int(starts, "starts", 1),
    )


# --------------------------------------------------------------------------- the function


def toy_loss(params: Sequence[jax.Array] | jax.Array, alphas: ArrayLike) -> jax.Array:
    """``F = sum_i alpha_i x_i^2 / (x_i^2 + y_i^2)``.

    Args:
      params: either the training pytree, a sequence of ``n`` arrays of shape
        ``[2]`` holding ``(x_i, y_i)`` (one SI group each), or an array of shape
        ``[..., n, 2]``.
      alphas: ``[n]`` positive weights.

    Returns:
      ``F`` (shape ``[...]``).  Undefined (NaN) if some ``x_i = y_i = 0``, a
      measure-zero set that random starts never hit.
    """
    theta = jnp.stack(params) if isinstance(params, (tuple, list)) else jnp.asarray(params)
    x, y = theta[..., 0], theta[..., 1]
    return jnp.sum(jnp.asarray(alphas, theta.dtype) * x * x / (x * x + y * y), axis=-1)


def random_starts(seed: int, starts: int, n: int) -> np.ndarray:
    """Starting points uniform on the unit sphere of ``R^{2n}``.

    Start ``k`` is ``normal(fold_in(PRNGKey(seed), k), [n, 2])`` normalised to
    unit joint norm, so it does not depend on how many starts are drawn (start 0
    of an 8-start run is the start of a 1-start run with the same seed).

    Returns:
      float32 ``[starts, n, 2]``.
    """
    key = jax.random.PRNGKey(seed)
    z = jnp.stack([jax.random.normal(jax.random.fold_in(key, k), (n, 2)) for k in range(starts)])
    z = z / jnp.sqrt(jnp.sum(z * z, axis=(1, 2), keepdims=True))
    return np.asarray(z, np.float32)


# --------------------------------------------------------------------------- simulation


class ToyRun(NamedTuple):
    """Result of :func:`run_toy`; all numpy arrays.

    Shape convention: always ``[E, S, T]`` or ``[E, S, T, n]`` with ``E`` ELRs,
    ``S`` starts, ``T = steps`` iterations and ``n`` groups, even when ``E``,
    ``S`` or ``n`` is 1.  Index ``t`` along ``T`` is the state *before* step
    ``t`` (after ``t`` steps), ``t = 0 .. T-1``: ``t = 0`` is the start, and the
    gradient-based quantities at ``t`` describe the step actually taken at ``t``.
    The state after the last step is in ``final_params`` / ``final_loss``.

    Attributes:
      alphas: ``[n]`` weights (float64, as given).
      elrs: ``[E]`` ELRs (float64, as given).
      starts: ``[S, n, 2]`` starting points (unit joint norm), shared by all ELRs.
      loss: ``[E, S, T]`` ``F`` before each step.
      group_elr: ``[E, S, T, n]`` individual ELRs ``lr / rho_i^2``.
      group_eff_grad_norm: ``[E, S, T, n]`` effective gradient norms
        ``||grad_i|| * rho_i``.
      group_ess: ``[E, S, T, n]`` effective step sizes (individual ELR times
        effective gradient norm: the angle group ``i`` turns by in step ``t``,
        to first order).
      final_params: ``[E, S, n, 2]`` parameters after ``T`` steps.
      final_loss: ``[E, S]`` ``F`` after ``T`` steps.
    """

    alphas: np.ndarray
    elrs: np.ndarray
    starts: np.ndarray
    loss: np.ndarray
    group_elr: np.ndarray
    group_eff_grad_norm: np.ndarray
    group_ess: np.ndarray
    final_params: np.ndarray
    final_loss: np.ndarray


def _simulate_one(alphas: jax.Array, elr: jax.Array, start: jax.Array, steps: int):
    """One trajectory: ``start`` [n, 2] on the unit sphere, ``steps`` steps at ``elr``."""
    n = start.shape[0]
    si_mask = (True,) * n
    params = tuple(start[i] for i in range(n))
    opt = sphere_sgd(elr, si_mask, radius=1.0)
    opt_state = opt.init(params)

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(toy_loss)(params, alphas)
        stats = group_stats(params, grads, si_mask, elr_to_lr(opt_state.elr, opt_state.radius))
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (loss, stats.elr, stats.eff_grad_norm, stats.ess)

    (params, _), history = jax.lax.scan(step, (params, opt_state), None, length=steps)
    final = jnp.stack(params)
    return history, final, toy_loss(final, alphas)


# One compiled program per (E, S, n, steps); jax.jit's cache keeps it, so repeated
# calls with the same shapes do not recompile.
_simulate = jax.jit(
    jax.vmap(  # over ELRs
        jax.vmap(_simulate_one, in_axes=(None, None, 0, None)),  # over starts
        in_axes=(None, 0, None, None),
    ),
    static_argnums=3,
)


def run_toy(
    alphas: ArrayLike, elrs: ArrayLike, steps: int, seed: int = 0, starts: int = 1
) -> ToyRun:
    """Trains the toy on the unit sphere at each ELR from each random start.

    Full-batch projected GD with :func:`~three_regimes_jax.sphere.sphere_sgd`
    (radius 1), in float32, as one jitted ``lax.scan`` vmapped over ELRs and
    starts.  Start ``k`` (see :func:`random_starts`) is shared by all ELRs.
    ``x_i^2 + y_i^2 = 0`` never happens from a generic start: a gradient step
    only adds a component orthogonal to each group (its norm grows), so a
    group's norm shrinks only through the joint rescaling, never to exactly 0.

    Args:
      alphas: ``[n]`` weights, finite and > 0.
      elrs: ``[E]`` effective learning rates, finite and > 0.
      steps: number of steps ``T >= 1``.
      seed: seed of the random starts, in ``[0, 2**32 - 1]``.
      starts: number of random starts ``S >= 1``.

    Returns:
      A :class:`ToyRun` (see there for the ``[E, S, T(, n)]`` convention).

    Raises:
      UserError: on any invalid argument.
    """
    alphas, elrs, steps, seed, starts = validate_run_args(alphas, elrs, steps, seed, starts)
    x0 = random_starts(seed, starts, alphas.size)
    (loss, g_elr, g_eff, g_ess), final, final_loss = _simulate(
        jnp.asarray(alphas, jnp.float32), jnp.asarray(elrs, jnp.float32), jnp.asarray(x0), steps
    )
    # scan stacks time first: [E, S, T, ...] after the two vmaps.
    return ToyRun(
        alphas=alphas,
        elrs=elrs,
        starts=x0,
        loss=np.asarray(loss),
        group_elr=np.asarray(g_elr),
        group_eff_grad_norm=np.asarray(g_eff),
        group_ess=np.asarray(g_ess),
        final_params=np.asarray(final),
        final_loss=np.asarray(final_loss),
    )


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

    The theory never returns 3 on the toy, on purpose.  Eqs. 8-9, Prop. 1 and
    eq. 25 give only one border, the threshold between convergence (regime 1)
    and a non-zero equilibrium level (regime 2), and no ELR at which a third
    regime starts.  Regime 3 in the paper is a random walk whose loss sits at
    its random-guess level; on the toy that level is the mean of ``F`` over the
    sphere, ``sum(alpha) / 2``.  The regime-2 level ``(sum(alpha) - 1/elr) / 2``
    only tends to it as ``elr -> infinity``, so regime 3 is an ``elr -> inf``
    limit here, not a range of ELRs.

    What the simulator shows (measured, not theory): the settled equilibrium of
    eq. 9 (every group on its Prop. 1 2-cycle, constant ``F``) holds for
    ``1 < elr * sum(alpha) <~ 1.7``.  Beyond about ``elr * sum(alpha) ~ 1.75``
    ``F`` fluctuates chaotically and never settles (``std / mean ~ 0.2-0.4``),
    while its time average still follows :func:`regime2_level` within a few
    percent (measured for alpha = (1,1), (1,3), (1,2,4), (1,2,3,4,5)).  Near the
    crossover, settled and chaotic runs coexist depending on the start.  The
    linearisation gives no border either: with ``C = elr * sum(alpha) > 1``,
    two steps about the eq. 9 2-cycle have one contracting eigenvalue
    ``(1 - 2/C^2)^2`` (a common rotation of all groups) and ``2(n - 1)``
    eigenvalues of modulus exactly 1 (the modes that move norm between
    groups; derived by hand and checked by finite differences), for every ELR
    above the threshold, so only nonlinear terms decide.
    :func:`observed_regime` labels non-settling runs 3 ("not settled"); that is
    a label for the observed behaviour, not this prediction.

    Returns:
      1 or 2.
    """
    return 1 if float(validate_elrs([elr])[0]) < convergence_threshold(alphas) else 2


def observed_regime(
    loss: ArrayLike,
    tol: float = 1e-6,
    settle_rtol: float = 0.05,
    small_ratio: float = 1e-3,
    decay_ratio: float = 0.5,
) -> int:
    """Classifies one trajectory of ``F`` (codes in :data:`OBSERVED_REGIME_CODES`).

    Rule, applied in order, with ``h`` the second half (``t >= T // 2``) of ``loss``:

    1. ``1`` (converged) if the last value is ``< tol``;
    2. ``2`` (settled) if ``std(h) <= settle_rtol * mean(h)``: a constant level
       (on the toy, the eq. 9 equilibrium has constant ``F``; measured
       ``std / mean <= 0.006`` at ``alpha = (1, 2, 4)``, ELR 0.2);
    3. ``0`` (undetermined, still converging) if ``F`` is tiny but not yet below
       ``tol``, ``mean(h) < small_ratio * max(loss)``, or still decaying, i.e.
       the mean over the last quarter is below ``decay_ratio`` times the mean
       over the third quarter.  This catches regime-1 runs close to the
       threshold, which converge slowly and can bounce back up for a while
       before converging;
    4. ``3`` (not settled) otherwise: ``F`` keeps fluctuating at a non-zero
       level (on the toy, ``std / mean`` is about 0.2-0.4 there).

    Args:
      loss: ``[T]`` trajectory of ``F``.
      tol: convergence tolerance on the last value.
      settle_rtol: relative std below which ``F`` counts as settled.
      small_ratio: see rule 3.
      decay_ratio: see rule 3.

    Returns:
      0, 1, 2 or 3.
    """
    f = np.asarray(loss, np.float64).reshape(-1)
    if f.size == 0:
        raise ValueError("observed_regime needs a non-empty trajectory")
    if f[-1] < tol:
        return 1
    t = f.size
    half = f[t // 2 :]
    if np.std(half) <= settle_rtol * np.mean(half):
        return 2
    if np.mean(half) < small_ratio * np.max(f):
        return 0
    third, last = f[t // 2 : (3 * t) // 4], f[(3 * t) // 4 :]
    if third.size and last.size and np.mean(last) < decay_ratio * np.mean(third):
        return 0
    return 3


def mean_second_half(values: ArrayLike, axis: int = -1) -> np.ndarray:
    """Mean over the second half (``t >= T // 2``) of the time axis ``axis`` of ``values``."""
    values = np.asarray(values)
    t = values.shape[axis]
    return np.mean(np.take(values, np.arange(t // 2, t), axis=axis), axis=axis)


__all__ = [
    "OBSERVED_REGIME_CODES",
    "ToyRun",
    "convergence_threshold",
    "equilibrium_group_elr",
    "mean_second_half",
    "observed_regime",
    "predicted_regime",
    "random_starts",
    "regime2_level",
    "run_toy",
    "single_group_level",
    "single_group_r2",
    "toy_loss",
    "validate_alphas",
    "validate_elrs",
    "validate_run_args",
]
