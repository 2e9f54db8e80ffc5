"""The paper's toy function with ``n`` scale-invariant groups, trained on the unit sphere.

The paper's toy example is::

    F(x, y) = sum_i alpha_i * x_i**2 / (x_i**2 + y_i**2),      alpha_i > 0,

a function of ``n`` pairs ``(x_i, y_i)``.  Each pair is scale-invariant on its
own, so each pair is one SI group (one pytree leaf of shape ``[2]``).  The joint
vector ``(x_1, y_1, ..., x_n, y_n)`` lives on the unit sphere of ``R^{2n}`` and is
trained by full-batch, deterministic projected gradient descent at a fixed
effective learning rate (ELR) with :func:`three_regimes_jax.engine.sphere.sphere_sgd`
(radius 1, so ``lr = elr``).  The minimum ``F = 0`` is reached at ``x = 0``.

This module holds the simulator (:func:`run_toy`) and re-exports the closed-form
theory of :mod:`three_regimes_jax.studies.toy_theory` (eqs. 8, 9, 25, Prop. 1:
:func:`convergence_threshold`, :func:`regime2_level`, :func:`predicted_regime`, ...).

:func:`classify_toy` labels simulated trajectories with the paper's regimes (the
general :func:`three_regimes_jax.analysis.regimes.classify` on ``F``); it is the
toy's one classifier, used by the ``toy`` command and the transition search.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from three_regimes_jax.analysis.regimes import Criteria, classify
from three_regimes_jax.engine.sphere import elr_to_lr, sphere_sgd
from three_regimes_jax.engine.stats import group_stats
from three_regimes_jax.errors import UserError
from three_regimes_jax.options import F32_MAX, F32_TINY, check_elrs
from three_regimes_jax.studies.toy_theory import (
    convergence_threshold,
    equilibrium_group_elr,
    predicted_regime,
    regime2_level,
    single_group_level,
    single_group_r2,
    toy_chance_loss,
    validate_alphas,
    validate_elrs,
)

ArrayLike = Any

#: What :func:`classify_toy`'s labels mean on the toy (also written to summary.json).
REGIME_LABELS: dict[int, str] = {
    1: "convergence: F falls to 0 (below the threshold 1/sum(alpha) of eq. 8)",
    2: "equilibrium: F stays at a level away from the random level sum(alpha)/2, "
    "settled or chaotic (eq. 25)",
    3: "random-guess level: the mean of F is near sum(alpha)/2 (a label convention; "
    "no regime 3 in the toy's theory)",
}

# --------------------------------------------------------------------------- validation


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
    """Validates every argument of :func:`run_toy`; raises :class:`UserError` naming the flag.

    The run is in float32, so every ``alpha_i``, their sum and every ELR must
    be a positive normal float32 number; ELRs must not repeat.

    Returns:
      ``(alphas, elrs, steps, seed, starts)`` as float64 arrays and Python ints.
    """
    a = validate_alphas(alphas)
    if not (np.all(a >= F32_TINY) and np.sum(a) <= F32_MAX):
        raise UserError(
            f"--alphas must be positive normal float32 numbers with a finite sum "
            f"(between {F32_TINY:g} and {F32_MAX:g}), got {a.tolist()}"
        )
    e = validate_elrs(elrs)
    check_elrs(e.tolist(), "--elrs")
    return (
        a,
        e,
        _validate_int(steps, "--steps", 1, 10**9),
        _validate_int(seed, "--seed", 0, 2**32 - 1),
        _validate_int(starts, "--starts", 1, 10**6),
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

    Full-batch projected GD with :func:`~three_regimes_jax.engine.sphere.sphere_sgd`
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


def classify_toy(
    loss: ArrayLike, alphas: ArrayLike, elrs: ArrayLike, criteria: Criteria | None = None
) -> dict[str, Any]:
    """Classifies toy trajectories into the paper's three regimes (:data:`REGIME_LABELS`).

    The curves are classified by :func:`~three_regimes_jax.analysis.regimes.classify`
    with only a loss (no accuracy): steps play the role of epochs (step ``t``
    is time ``t + 1``) and the random-guess level is :func:`toy_chance_loss`.
    1: ``F`` falls to 0; 2: ``F`` stays at a level away from the random level,
    settled (the eq. 9 2-cycles) or chaotic, as :func:`predicted_regime` says
    (e.g. ``alpha = (1, 2, 4)``: ELR 0.1 -> 1, 0.2 -> 2 settled at 1.0, 0.5 ->
    2 chaotic around 2.5); 3: the mean of ``F`` is within ``1 -
    chance_loss_frac`` of the random level, which eq. 25 reaches at ``elr = 1 /
    ((1 - chance_loss_frac) * sum(alpha))`` (10/7 for (1, 2, 4)), a convention,
    not physics (``docs/REGIMES.md``).  Each member's reason ends with the
    theory for its ELR.

    Args:
      loss: ``[E, T]`` or ``[E, S, T]`` trajectories (``ToyRun.loss``).
      alphas: ``[n]`` weights.
      elrs: ``[E]`` ELRs.
      criteria: thresholds (default :class:`~three_regimes_jax.analysis.regimes.Criteria`).

    Returns:
      The :func:`~three_regimes_jax.analysis.regimes.classify` report; members are
      ELR-major with ``seed`` = start index.
    """
    alphas = validate_alphas(alphas)
    elrs = validate_elrs(elrs)
    loss = np.asarray(loss, np.float64)
    if loss.ndim == 2:
        loss = loss[:, None, :]
    if loss.ndim != 3 or loss.shape[0] != elrs.size:
        raise UserError(
            f"toy loss must have shape [E, T] or [E, S, T] with E = {elrs.size}, got {loss.shape}"
        )
    e, s, t = loss.shape
    metrics = {
        "elr": np.repeat(elrs, s),
        "seed": np.tile(np.arange(s), e),
        "epoch": np.arange(1, t + 1, dtype=np.float64),
        "train_loss": loss.reshape(e * s, t),
    }
    report = classify(
        metrics, criteria=criteria, chance_loss=toy_chance_loss(alphas), time_unit="steps"
    )
    for m in report["members"]:
        pred = predicted_regime(alphas, m["elr"])
        level = regime2_level(alphas, m["elr"])
        m["reason"] += f" [theory: regime {pred}, eq. 25 level {level:.3g}]"
    return report


def mean_second_half(values: ArrayLike, axis: int = -1) -> np.ndarray:
    """Mean over the second half (``t >= T // 2``) of the time axis ``axis`` of ``values``."""
    values = np.asarray(values)
    t = values.shape[axis]
    return np.mean(np.take(values, np.arange(t // 2, t), axis=axis), axis=axis)


__all__ = [
    "REGIME_LABELS",
    "ToyRun",
    "classify_toy",
    "convergence_threshold",
    "equilibrium_group_elr",
    "mean_second_half",
    "predicted_regime",
    "random_starts",
    "regime2_level",
    "run_toy",
    "single_group_level",
    "single_group_r2",
    "toy_chance_loss",
    "toy_loss",
    "validate_alphas",
    "validate_elrs",
    "validate_run_args",
]
