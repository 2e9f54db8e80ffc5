"""Trajectory and equilibrium diagnostics (paper Fig. 4, 20-21, 24 and App. M).

- :func:`adjacent_cos`: cosine between the SI weights of two parameter sets.
- :func:`ess_spread`, :func:`equilibration_summary`: how evenly the effective
  step sizes of the SI groups are spread (they cluster in regime 2).
- :func:`tangent_gaussian`: the random direction of the random-walk baseline.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def _si_flat(params: PyTree, si_mask: PyTree) -> jax.Array:
    leaves = jax.tree.leaves(params)
    mask = jax.tree.leaves(si_mask)
    if len(leaves) != len(mask):
        raise ValueError(f"si_mask has {len(mask)} leaves but params has {len(leaves)}")
    return jnp.concatenate(
        [p.astype(jnp.float32).ravel() for p, m in zip(leaves, mask, strict=True) if m]
    )


def adjacent_cos(params_a: PyTree, params_b: PyTree, si_mask: PyTree) -> jax.Array:
    """Cosine between the SI weights of two parameter sets, flattened jointly.

    Invariant to rescaling either set's SI weights; used for the cosine between
    the weights of adjacent epochs (a small angle when converging, a roughly
    constant one in the equilibrium).  Vmappable over a grid axis.

    Args:
      params_a: first parameter tree.
      params_b: second parameter tree (same structure).
      si_mask: boolean pytree of SI leaves (static).

    Returns:
      A scalar in ``[-1, 1]``.
    """
    mask = jax.tree.leaves(si_mask)
    leaves_a, leaves_b = jax.tree.leaves(params_a), jax.tree.leaves(params_b)
    if not len(leaves_a) == len(leaves_b) == len(mask):
        raise ValueError(f"si_mask has {len(mask)} leaves but params has {len(leaves_a)}")
    pairs = [
        (a.astype(jnp.float32), b.astype(jnp.float32))
        for a, b, m in zip(leaves_a, leaves_b, mask, strict=True)
        if m
    ]
    # Per-leaf sums (one fused pass), not one concatenated vector: no copy of the weights.
    ab = sum(jnp.sum(a * b) for a, b in pairs)
    aa = sum(jnp.sum(a * a) for a, _ in pairs)
    bb = sum(jnp.sum(b * b) for _, b in pairs)
    return ab * jax.lax.rsqrt(aa * bb)


def ess_spread(group_ess: jax.Array) -> jax.Array:
    """Spread of the per-group ESS across groups (last axis): coefficient of variation.

    ``std / mean`` (population std) over the last axis.  Scale-free, so ELRs
    that differ by orders of magnitude can be compared; in regime 2 the
    per-group ESS cluster and the spread is small, in regime 1 it is large.

    Args:
      group_ess: ``[..., n_groups]``.

    Returns:
      ``[...]``; non-finite inputs give non-finite outputs (diverged members).
    """
    group_ess = jnp.asarray(group_ess, jnp.float32)
    return jnp.std(group_ess, axis=-1) / jnp.mean(group_ess, axis=-1)


def equilibration_summary(
    group_elr: jax.Array, group_eff_grad_norm: jax.Array, group_ess: jax.Array, last_k: int
) -> dict[str, jax.Array]:
    """Per-group means over the last ``last_k`` epochs and their spread across groups.

    Args:
      group_elr: per-group ELRs ``[G, T, n]`` (any leading axes before ``T``).
      group_eff_grad_norm: per-group effective gradient norms, same shape.
      group_ess: per-group ESS, same shape.
      last_k: number of final epochs to average, ``1 <= last_k <= T``.

    Returns:
      ``elr``, ``eff_grad_norm``, ``ess``: the means ``[G, n]``; and
      ``elr_spread``, ``eff_grad_norm_spread``, ``ess_spread``: their coefficient
      of variation across groups (see :func:`ess_spread`), ``[G]``.

    Raises:
      ValueError: if the shapes differ or ``last_k`` is out of range.
    """
    arrays = {"elr": group_elr, "eff_grad_norm": group_eff_grad_norm, "ess": group_ess}
    arrays = {k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()}
    shapes = {v.shape for v in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) < 2:
        raise ValueError(f"expected three arrays of one shape [G, T, n], got {shapes}")
    t = next(iter(shapes))[-2]
    if not 1 <= int(last_k) <= t:
        raise ValueError(f"last_k must be between 1 and the number of epochs {t}, got {last_k}")
    out = {k: v[..., -int(last_k) :, :].mean(axis=-2) for k, v in arrays.items()}
    out.update({f"{k}_spread": ess_spread(v) for k, v in list(out.items())})
    return out


def tangent_gaussian(
    key: jax.Array, params: PyTree, grads: PyTree, si_mask: PyTree, norm: jax.Array | None = None
) -> PyTree:
    """A random SI direction shaped like a real SI gradient (App. M random-walk baseline).

    A standard Gaussian on every SI leaf, projected onto each group's tangent
    space (orthogonal to ``theta_i``, as the gradient of an SI function is),
    then rescaled so that its joint norm over the SI leaves equals
    ``||grads_SI||``.  Replacing the gradient with it in :func:`sphere_sgd
    <three_regimes_jax.engine.sphere.sphere_sgd>` gives a step of the same length in a
    random tangent direction.  Non-SI leaves are zeros.  Vmappable.

    Args:
      key: PRNG key.
      params: parameters ``theta``.
      grads: the real gradients (only their SI joint norm is used).
      si_mask: boolean pytree of SI leaves (static).
      norm: the joint SI norm to rescale to instead of ``||grads_SI||`` (NaN:
        that of ``grads``), e.g. a regular run's gradient norm (App. M).

    Returns:
      A pytree shaped like ``params``.
    """
    leaves, treedef = jax.tree.flatten(params)
    mask = [bool(m) for m in jax.tree.leaves(si_mask)]
    g_norm = jnp.linalg.norm(_si_flat(grads, si_mask))
    if norm is not None:
        g_norm = jnp.where(jnp.isnan(norm), g_norm, norm)
    keys = jax.random.split(key, len(leaves))
    out = []
    for p, m, k in zip(leaves, mask, keys, strict=True):
        if not m:
            out.append(None)
            continue
        th = p.astype(jnp.float32)
        r = jax.random.normal(k, p.shape, jnp.float32)
        r = r - (jnp.vdot(r, th) / jnp.vdot(th, th)) * th
        out.append(r)
    r_norm = jnp.sqrt(sum(jnp.sum(jnp.square(r)) for r in out if r is not None))
    scale = g_norm / r_norm
    res = [
        jnp.zeros_like(p) if r is None else (scale * r).astype(p.dtype)
        for p, r in zip(leaves, out, strict=True)
    ]
    return jax.tree.unflatten(treedef, res)
