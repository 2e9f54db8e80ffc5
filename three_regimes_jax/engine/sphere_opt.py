"""Optimizers on spheres beyond projected SGD, on the total, per-layer or per-filter spheres.

The paper trains with projected SGD on the sphere of all SI parameters
(:func:`~three_regimes_jax.engine.sphere.sphere_sgd`).  Here are the other
methods researchers use for scale-invariant weights, as swept Optax-style
transformations (``init(params, elr=...)`` stores each member's values in the
state, so ``jax.vmap`` over a stacked state sweeps them), on one of three
sphere partitions of the SI parameters (``sphere``):

- ``total``: one sphere of all SI leaves jointly, radius ``rho0`` (the initial
  SI norm), as the paper (App. A.1 argues it is the natural one);
- ``layer``: each SI leaf on its own sphere, radius its initial norm ``rho_l``
  (``sum_l rho_l**2 = rho0**2``, so the total norm is kept too);
- ``filter``: each output filter (last axis of an SI kernel) on its own sphere
  of radius ``sqrt(rho0**2 / F)`` (F filters), as the official code's
  ``fix_all_elr``: the initial weights are rescaled onto it
  (:func:`SphereOptimizer.prepare`) and the total norm stays ``rho0``.

On every partition ``lr = elr * rho0**2`` for the SGD family, so the total
ELR ``lr / rho0**2`` is the swept ``elr`` and a group of radius ``r`` moves at
ELR ``lr / r**2`` (``group_elr`` in the metrics).  Per group, with ``P(x) =
x - <x, theta>/<theta, theta> theta`` the projection onto the tangent space
and ``R`` the retraction (``normalize``: ``r * y / ||y||``; ``exp``: the
great-circle step ``cos(|v|/r) theta + sin(|v|/r) r v/|v|``):

- ``sgd``: ``theta' = r (theta - lr g) / ||theta - lr g||`` (the paper's step);
- ``riemannian_sgd``: ``theta' = R(theta, -lr P(g))``.  For SI weights
  ``<g, theta> = 0``, so with ``normalize`` it *is* projected SGD; with
  ``exp`` it differs at second order in the ELR (the great circle is
  ``||theta - lr g||`` long, ``arctan`` vs ``lr ||g|| / r``);
- ``sphere_momentum``: ``m = beta * m + P(g)``; ``theta' = R(theta, -lr' m)``;
  ``m`` transported to the new tangent space by projection, ``m' = P'(m)``.
  ``elr`` is the *effective* ELR with momentum, ``lr' = elr (1 - beta)
  rho0**2``: a steady gradient gives ``m = P(g) / (1 - beta)``, so the step is
  the one of SGD at ELR ``elr``, and the regime borders are comparable with
  SGD's on the same axis (momentum only smooths the noise);
- ``sphere_adam``: Adam's moments of the tangent gradient ``P(g)`` (the first
  transported as ``m``), ``d = P(m_hat / (sqrt(v_hat) + eps))`` and
  ``theta' = R(theta, -lr * d)``.  Adam's direction does not scale
  with the gradient (which scales as ``1/rho`` for SI weights), so the angle
  a step turns is ``lr ||d|| / r``.
  Here ``lr = elr * rho0 / sqrt(D)`` (D SI parameters): ``elr`` is the angle,
  in radians, turned on the total sphere by a direction whose entries have
  RMS 1 (Adam's are about that size), whatever ``rho0`` and D.  This settles
  the ambiguity the paper (Sec. 2) sees in "Adam at a fixed ELR": on a fixed
  sphere every definition is a constant factor of the others, and this one
  makes ELRs comparable across models and radii;
- ``sgdp`` / ``adamp`` (Heo et al. 2021): SGD with momentum / Adam in the
  whole space whose update loses its radial component when the weight and
  the gradient are nearly orthogonal (``max |cos| < delta / sqrt(dim)`` per
  filter or per layer, ``delta = 0.1``), without weight decay; the norm then
  grows slowly, so they are baselines *not* on a fixed sphere.  ``lr = elr
  rho0**2`` (``adamp``: ``elr rho0 / sqrt(D)`` as ``sphere_adam``), so ``elr``
  is their initial ELR.

Non-SI leaves are frozen, as in the paper's sphere runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from three_regimes_jax.engine.sphere import _si_leaves

PyTree = Any

SPHERES = ("total", "layer", "filter")
OPTIMIZERS = ("sgd", "riemannian_sgd", "sphere_momentum", "sphere_adam", "sgdp", "adamp")
RETRACTIONS = ("normalize", "exp")
#: Optimizers on a fixed sphere (``sgdp``/``adamp`` are not).
ON_SPHERE = ("sgd", "riemannian_sgd", "sphere_momentum", "sphere_adam")
#: Heo et al.'s defaults: the orthogonality threshold ``delta`` and Adam's ``eps``.
SGDP_DELTA = 0.1
EPS = 1e-8


class SphereOptState(NamedTuple):
    """One member's optimizer state (lists run over the SI leaves, in tree order).

    Attributes:
      elr: the swept ELR (see the module docstring for each optimizer's meaning).
      unit: the learning rate of ELR 1 (``lr = elr * unit``): ``rho0**2``,
        ``(1 - beta) rho0**2`` (``sphere_momentum``) or ``rho0 / sqrt(D)``
        (Adam types; D SI parameters), fixed at ``init``.
      radii: each SI leaf's radius, broadcastable to it (``[]`` or ``[1, .., F]``).
      count: steps taken (Adam's bias correction).
      beta1: momentum / Adam's ``beta1``.
      beta2: Adam's ``beta2``.
      mu: first moments (momentum buffers) per SI leaf (empty for ``sgd``).
      nu: second moments per SI leaf (Adam only).
    """

    elr: jax.Array
    unit: jax.Array
    radii: tuple
    count: jax.Array
    beta1: jax.Array
    beta2: jax.Array
    mu: tuple
    nu: tuple


def group_sum(x: jax.Array, sphere: str) -> jax.Array:
    """Sum of ``x`` over each group of one SI leaf, broadcastable to it (not ``total``)."""
    if sphere == "filter":
        return jnp.sum(x, axis=tuple(range(x.ndim - 1)), keepdims=True)
    return jnp.sum(x)


def group_dots(xs: list, ys: list, sphere: str) -> list:
    """``<x, y>`` per group for each SI leaf, broadcastable to the leaf."""
    per = [
        group_sum(x.astype(jnp.float32) * y.astype(jnp.float32), sphere)
        for x, y in zip(xs, ys, strict=True)
    ]
    if sphere != "total":
        return per
    total = sum(per)
    return [total] * len(xs)


def tangent(xs: list, thetas: list, sphere: str) -> list:
    """``P(x) = x - <x, theta>/<theta, theta> theta`` per group."""
    xt = group_dots(xs, thetas, sphere)
    tt = group_dots(thetas, thetas, sphere)
    return [x - (a / b) * t for x, t, a, b in zip(xs, thetas, xt, tt, strict=True)]


def retract(thetas: list, vs: list, radii: list, sphere: str, how: str = "normalize") -> list:
    """The point reached from ``theta`` along ``v`` on each group's sphere of radius ``r``.

    ``normalize``: ``r (theta + v) / ||theta + v||``; ``exp``: the great circle
    ``cos(|v|/r) theta + sin(|v|/r) r v / |v|`` (``v`` tangent), then rescaled
    to ``r`` against float rounding.
    """
    if how == "normalize":
        ys = [t + v for t, v in zip(thetas, vs, strict=True)]
        yy = group_dots(ys, ys, sphere)
        return [r * y * jax.lax.rsqrt(n) for y, r, n in zip(ys, radii, yy, strict=True)]
    vv = group_dots(vs, vs, sphere)
    out = []
    for t, v, r, n in zip(thetas, vs, radii, vv, strict=True):
        norm = jnp.sqrt(n)
        safe = jnp.where(norm > 0, norm, 1.0)
        out.append(jnp.cos(norm / r) * t + jnp.sin(norm / r) * r * v / safe)
    # Exact on the sphere in exact arithmetic; rescaled so float rounding cannot build up.
    return retract(out, [jnp.zeros_like(x) for x in out], radii, sphere)


def _initial_radii(thetas: list, sphere: str) -> list:
    """Each SI leaf's radius: the total norm, the leaf's, or ``sqrt(rho0**2 / F)``."""
    if sphere == "filter":
        n_filters = sum(t.shape[-1] for t in thetas)
        rho0_sq = sum(jnp.sum(jnp.square(t.astype(jnp.float32))) for t in thetas)
        r = jnp.sqrt(rho0_sq / n_filters)
        return [jnp.full((1,) * (t.ndim - 1) + (t.shape[-1],), r, jnp.float32) for t in thetas]
    return [jnp.sqrt(d) for d in group_dots(thetas, thetas, sphere)]


def _orthogonal(theta: jax.Array, g: jax.Array, delta: float) -> tuple[jax.Array, jax.Array]:
    """Heo et al.'s test: ``(use_filter_view, use_layer_view)`` for one leaf.

    The filter view (each output unit) is tried first, then the layer view; a
    view applies when every ``|cos(theta, g)|`` in it is below
    ``delta / sqrt(its size)``.
    """
    t = theta.astype(jnp.float32).reshape(-1, theta.shape[-1])
    gg = g.astype(jnp.float32).reshape(-1, theta.shape[-1])
    cos_f = jnp.abs(jnp.sum(t * gg, 0)) / (
        jnp.sqrt(jnp.sum(t * t, 0)) * jnp.sqrt(jnp.sum(gg * gg, 0)) + EPS
    )
    filt = jnp.max(cos_f) < delta / jnp.sqrt(float(t.shape[0]))
    cos_l = jnp.abs(jnp.sum(t * gg)) / (jnp.sqrt(jnp.sum(t * t)) * jnp.sqrt(jnp.sum(gg * gg)) + EPS)
    layer = cos_l < delta / jnp.sqrt(float(t.size))
    return filt, jnp.logical_and(layer, jnp.logical_not(filt))


def _remove_radial(theta: jax.Array, g: jax.Array, d: jax.Array, delta: float) -> jax.Array:
    """SGDP/AdamP's projection of one leaf's update ``d`` (see :func:`_orthogonal`)."""
    filt, layer = _orthogonal(theta, g, delta)
    t32, d32 = theta.astype(jnp.float32), d.astype(jnp.float32)
    d_f = tangent([d32], [t32], "filter")[0]
    d_l = tangent([d32], [t32], "layer")[0]
    return jnp.where(filt, d_f, jnp.where(layer, d_l, d32))


def _adam(state: SphereOptState, gs: list, count: jax.Array) -> tuple[list, list, list]:
    """Adam's moments of ``gs`` and its bias-corrected direction ``m_hat / (sqrt(v_hat) + eps)``."""
    b1, b2 = state.beta1, state.beta2
    m = [b1 * a + (1 - b1) * g for a, g in zip(state.mu, gs, strict=True)]
    v = [b2 * s + (1 - b2) * g * g for s, g in zip(state.nu, gs, strict=True)]
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    return m, v, [(a / c1) / (jnp.sqrt(s / c2) + EPS) for a, s in zip(m, v, strict=True)]


class SphereOptimizer(NamedTuple):
    """A swept optimizer of this module, as ``optim.make_optimizer`` wraps it.

    Attributes:
      init: ``init(params, *, elr) -> SphereOptState``.
      update: ``update(grads, state, params) -> (updates, state)``.
      lr: the plain learning rate of the SI parameters, ``elr * unit``
        (:class:`SphereOptState`).
      prepare: ``prepare(params) -> params`` on the sphere (``filter``
        rescales every filter to the common radius; else the identity).
    """

    init: Callable[..., SphereOptState]
    update: Callable[..., tuple[PyTree, SphereOptState]]
    lr: Callable[[SphereOptState], jax.Array]
    prepare: Callable[[PyTree], PyTree]


def sphere_optimizer(
    name: str,
    si_mask: PyTree,
    *,
    sphere: str = "total",
    momentum: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    retraction: str = "normalize",
) -> SphereOptimizer:
    """One of :data:`OPTIMIZERS` on one of :data:`SPHERES` (module docstring).

    Args:
      name: the optimizer.
      si_mask: boolean pytree of the SI leaves.
      sphere: the sphere partition (``sgdp``/``adamp``: ``total`` only, they
        are not on a sphere).
      momentum: ``beta`` of ``sphere_momentum`` and ``sgdp``.
      betas: Adam's ``(beta1, beta2)``.
      retraction: ``normalize`` or ``exp`` (the on-sphere optimizers but ``sgd``).

    Raises:
      ValueError: an unknown name, sphere or retraction.
    """
    if name not in OPTIMIZERS or sphere not in SPHERES or retraction not in RETRACTIONS:
        raise ValueError(
            f"unknown optimizer {name!r}, sphere {sphere!r} or retraction {retraction!r}"
        )
    adam = name in ("sphere_adam", "adamp")
    has_mu = name in ("sphere_momentum", "sphere_adam", "sgdp", "adamp")
    beta1 = betas[0] if adam else momentum

    def si(tree):
        return _si_leaves(tree, si_mask)

    def rebuild(tree, new_si):
        it = iter(new_si)
        return jax.tree.map(lambda m, p: next(it).astype(p.dtype) if m else p, si_mask, tree)

    def prepare(params):
        if sphere != "filter":
            return params
        thetas = si(params)
        radii = _initial_radii(thetas, sphere)
        norms = [jnp.sqrt(d) for d in group_dots(thetas, thetas, "filter")]
        return rebuild(params, [r * t / n for t, r, n in zip(thetas, radii, norms, strict=True)])

    def init(params, *, elr):
        thetas = si(params)
        rho0_sq = sum(jnp.sum(jnp.square(t.astype(jnp.float32))) for t in thetas)
        if adam:
            unit = jnp.sqrt(rho0_sq / sum(t.size for t in thetas))
        else:
            unit = rho0_sq * (1.0 - momentum if name == "sphere_momentum" else 1.0)
        f32 = [jnp.zeros(t.shape, jnp.float32) for t in thetas]
        return SphereOptState(
            elr=jnp.asarray(elr, jnp.float32),
            unit=jnp.asarray(unit, jnp.float32),
            radii=tuple(_initial_radii(thetas, sphere)),
            count=jnp.zeros((), jnp.int32),
            beta1=jnp.asarray(beta1, jnp.float32),
            beta2=jnp.asarray(betas[1], jnp.float32),
            mu=tuple(f32) if has_mu else (),
            nu=tuple(jnp.zeros_like(z) for z in f32) if adam else (),
        )

    def lr(state: SphereOptState) -> jax.Array:
        return state.elr * state.unit

    def update(grads, state: SphereOptState, params):
        thetas = [t.astype(jnp.float32) for t in si(params)]
        gs = [g.astype(jnp.float32) for g in si(grads)]
        radii = list(state.radii)
        step_lr = lr(state)
        count = state.count + 1
        mu, nu = state.mu, state.nu

        def step(direction, how=retraction):  # theta' = R(theta, -lr * direction)
            return retract(thetas, [-step_lr * x for x in direction], radii, sphere, how)

        if name == "sgd":
            new = step(gs, "normalize")
        elif name == "riemannian_sgd":
            new = step(tangent(gs, thetas, sphere))
        elif name == "sphere_momentum":
            m = [state.beta1 * b + g for b, g in zip(mu, tangent(gs, thetas, sphere), strict=True)]
            new = step(m)
            mu = tuple(tangent(m, new, sphere))
        elif name == "sphere_adam":
            m, v, d = _adam(state, tangent(gs, thetas, sphere), count)
            new = step(tangent(d, thetas, sphere))
            mu, nu = tuple(tangent(m, new, sphere)), tuple(v)
        elif name == "sgdp":
            m = [state.beta1 * b + g for b, g in zip(mu, gs, strict=True)]
            d = [_remove_radial(t, g, x, SGDP_DELTA) for t, g, x in zip(thetas, gs, m, strict=True)]
            new = [t - step_lr * x for t, x in zip(thetas, d, strict=True)]
            mu = tuple(m)
        else:  # adamp
            m, v, p = _adam(state, gs, count)
            d = [_remove_radial(t, g, x, SGDP_DELTA) for t, g, x in zip(thetas, gs, p, strict=True)]
            new = [t - step_lr * x for t, x in zip(thetas, d, strict=True)]
            mu, nu = tuple(m), tuple(v)
        new_params = rebuild(params, new)
        updates = jax.tree.map(lambda n, p: n - p, new_params, params)
        return updates, state._replace(count=count, mu=mu, nu=nu)

    return SphereOptimizer(init, update, lr, prepare)


__all__ = [
    "ON_SPHERE",
    "OPTIMIZERS",
    "RETRACTIONS",
    "SPHERES",
    "SphereOptState",
    "SphereOptimizer",
    "group_dots",
    "retract",
    "sphere_optimizer",
    "tangent",
]
