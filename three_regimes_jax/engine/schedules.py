"""ELR schedules on the sphere, per member, as traced functions of the (fractional) epoch.

A member's schedule multiplies its ELR by ``factor(t)``, ``t`` the epoch with
the steps done in it as a fraction (``t = epoch + i / steps_per_epoch`` at
step ``i`` of the epoch), ``T`` the run's epochs.  Schedules are written:

- ``constant``: 1;
- ``cosine``: ``(1 + cos(pi t / T)) / 2`` (from the ELR down to 0);
- ``step:GAMMA@E1+E2+...``: multiplied by ``GAMMA`` at each epoch ``E_k``
  (at most :data:`MAX_MILESTONES`);
- ``warmup:W``: linear from 0 (at ``t = 0``) to the ELR at epoch ``W``, then
  constant; ``warmup_cosine:W``: the same, then cosine from ``W`` down to 0 at ``T``;
- ``regime:ELR2@E``: the regime-aware schedule: the member's ELR until epoch
  ``E``, then ``ELR2`` (absolute).  With the member's ELR a low regime-2 ELR
  and ``ELR2`` in regime 1 below the 1/2 border (:func:`~three_regimes_jax.
  studies.transitions.find_transitions`), training first explores in the
  chaotic equilibrium, then converges (Sec. 6 of the paper: the best cosine
  runs pass through regime 2, then 1).

A schedule is one integer kind and :data:`N_ARGS` floats, so members with
different schedules are one stacked state and one compiled step
(:class:`ScheduledState`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from three_regimes_jax.elr_schedules import KINDS, MAX_MILESTONES, N_ARGS, parse_schedule


def factor(kind: jax.Array, args: jax.Array, t: jax.Array, total: float) -> jax.Array:
    """The ELR factor of schedule ``(kind, args)`` at fractional epoch ``t`` of ``total``."""
    t = jnp.asarray(t, jnp.float32)
    total = jnp.float32(max(float(total), 1.0))
    cosine = (1.0 + jnp.cos(jnp.pi * jnp.clip(t / total, 0.0, 1.0))) / 2.0
    steps = args[0] ** jnp.sum(t >= args[1:]).astype(jnp.float32)
    w = args[0]
    warm = jnp.clip(t / w, 0.0, 1.0)
    after = jnp.clip((t - w) / jnp.maximum(total - w, 1e-6), 0.0, 1.0)
    warm_cos = jnp.where(t < w, warm, (1.0 + jnp.cos(jnp.pi * after)) / 2.0)
    regime = jnp.where(t < args[1], 1.0, args[0])
    options = jnp.stack([jnp.float32(1.0), cosine, steps, warm, warm_cos, regime])
    return options[kind]


class ScheduledState(NamedTuple):
    """An optimizer state with the member's ELR schedule (see the module docstring).

    Attributes:
      inner: the optimizer's own state (with an ``elr`` field).
      kind: the schedule's index in :data:`KINDS`.
      args: its :data:`N_ARGS` floats.
    """

    inner: object
    kind: jax.Array
    args: jax.Array

    @property
    def elr(self) -> jax.Array:
        """The member's (unscheduled) ELR."""
        return self.inner.elr


__all__ = ["KINDS", "MAX_MILESTONES", "N_ARGS", "ScheduledState", "factor", "parse_schedule"]
