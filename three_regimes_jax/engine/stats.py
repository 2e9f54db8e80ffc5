"""Per-group statistics of the paper's Sec. 2: each SI group's ELR, effective gradient norm, ESS.

One group per SI leaf (:func:`group_stats`) or per filter (:func:`filter_stats`),
from the per-leaf sums of the step (:func:`~three_regimes_jax.engine.sphere.leaf_sums`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from three_regimes_jax.engine.sphere import LeafSums, _si_leaves, leaf_sums

PyTree = Any


class GroupStats(NamedTuple):
    """Per-group (one group per SI leaf) and total quantities of the paper's Sec. 2.

    Attributes:
      rho: ``[n]`` group norms ``rho_i = ||theta_i||``.
      elr: ``[n]`` individual ELRs ``lr / rho_i**2``.
      eff_grad_norm: ``[n]`` effective gradient norms ``||grad_i|| * rho_i``.
      ess: ``[n]`` effective step sizes ``elr_i * eff_grad_norm_i``.
      total_rho: joint SI norm.
      total_elr: ``lr / total_rho**2`` (equals the run's ELR on the sphere).
      total_eff_grad_norm: ``||grad_SI|| * total_rho``.
      total_ess: ``total_elr * total_eff_grad_norm``.
    """

    rho: jax.Array
    elr: jax.Array
    eff_grad_norm: jax.Array
    ess: jax.Array
    total_rho: jax.Array
    total_elr: jax.Array
    total_eff_grad_norm: jax.Array
    total_ess: jax.Array


def group_stats(
    params: PyTree, grads: PyTree, si_mask: PyTree, lr: jax.Array, sums: LeafSums | None = None
) -> GroupStats:
    """Per-group ELR, effective gradient norm and ESS; jittable and vmappable.

    Satisfies ``sum_i 1/elr_i = 1/total_elr`` (eq. 3) and
    ``(total_elr * total_eff_grad_norm)**2 = sum_i w_i (elr_i * eff_grad_norm_i)**2``
    with ``w_i = total_elr / elr_i`` (eq. 4).

    Args:
      params: parameters at which ``grads`` were taken.
      grads: gradients of the loss.
      si_mask: boolean pytree of SI leaves.
      lr: the (plain) learning rate, ``elr * radius**2``.
      sums: :func:`leaf_sums` of ``params`` and ``grads`` (computed if None).

    Returns:
      A :class:`GroupStats`.
    """
    sums = leaf_sums(params, grads, si_mask) if sums is None else sums
    return _stats(sums.pp, sums.gg, lr)


def _stats(rho_sq: jax.Array, grad_sq: jax.Array, lr: jax.Array) -> GroupStats:
    """:class:`GroupStats` from each group's squared weight and gradient norms."""
    lr = jnp.asarray(lr, jnp.float32)
    rho = jnp.sqrt(rho_sq)
    elr = lr / rho_sq
    eff = jnp.sqrt(grad_sq) * rho
    total_rho = jnp.sqrt(jnp.sum(rho_sq))
    total_elr = lr / jnp.sum(rho_sq)
    total_eff = jnp.sqrt(jnp.sum(grad_sq)) * total_rho
    return GroupStats(
        rho=rho,
        elr=elr,
        eff_grad_norm=eff,
        ess=elr * eff,
        total_rho=total_rho,
        total_elr=total_elr,
        total_eff_grad_norm=total_eff,
        total_ess=total_elr * total_eff,
    )


def filter_stats(params: PyTree, grads: PyTree, si_mask: PyTree, lr: jax.Array) -> GroupStats:
    """:func:`group_stats` with every filter as its own SI group (paper Figs. 4, 20, 21).

    A filter is one output unit of an SI kernel (the last axis: output
    channel of an HWIO convolution, output unit of a dense kernel); BatchNorm
    after it normalises each channel, so each filter is SI on its own.  The
    groups follow the SI leaves in :func:`si_group_names` order, then the
    filters of each.  ``sum_f 1/elr_f = 1/total_elr`` (eq. 3) holds as for layers.
    """
    p_leaves = _si_leaves(params, si_mask)
    g_leaves = _si_leaves(grads, si_mask)

    def per_filter(x):
        x = x.astype(jnp.float32)
        return jnp.sum(jnp.square(x.reshape(-1, x.shape[-1])), axis=0)

    rho_sq = jnp.concatenate([per_filter(p) for p in p_leaves])
    grad_sq = jnp.concatenate([per_filter(g) for g in g_leaves])
    return _stats(rho_sq, grad_sq, lr)


def filter_groups_of(params: PyTree, si_mask: PyTree) -> np.ndarray:
    """Index of each filter's layer (its SI group, in :func:`si_group_names` order)."""
    sizes = [p.shape[-1] for p in _si_leaves(params, si_mask)]
    return np.repeat(np.arange(len(sizes)), sizes)


def n_filters(params: PyTree, si_mask: PyTree) -> int:
    """Number of filters (output units) over the SI leaves (see :func:`filter_stats`)."""
    return int(sum(p.shape[-1] for p in _si_leaves(params, si_mask)))


def n_si_params(params: PyTree, si_mask: PyTree) -> int:
    """Number of scalar SI parameters."""
    return int(sum(np.prod(p.shape) for p in _si_leaves(params, si_mask)))
