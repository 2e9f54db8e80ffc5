"""The optimizer factory: one transformation per training config, swept values in its state.

:func:`make_optimizer` turns a :class:`~three_regimes_jax.config.TrainConfig`
into a :class:`SweptOptimizer`: Optax-style ``init``/``update`` functions whose
swept hyperparameters (the ELR today) are given per member to ``init`` and
stored in the state, as ``optax.inject_hyperparams`` does.  One instance
serves a whole grid: ``update`` reads each member's values from its state, so
``jax.vmap`` over a stacked state sweeps them, and nothing about a member is a
Python constant in the compiled step.

The random-walk baseline of App. M is an Optax transformation
(:func:`random_walk`) chained before the sphere step: it replaces the gradient
with a random tangent direction of the same length.  It is stateless, so the
optimizer state is the sphere step's own state
(:class:`~three_regimes_jax.engine.sphere.SphereState`) with or without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from three_regimes_jax.config import TrainConfig
from three_regimes_jax.engine.diagnostics import tangent_gaussian
from three_regimes_jax.engine.sphere import SphereState, elr_to_lr, sphere_sgd_swept

PyTree = Any


class SweptOptimizer(NamedTuple):
    """An optimizer whose swept hyperparameters live in its state.

    Attributes:
      init: ``init(params, **hyperparams) -> state``; ``hyperparams`` are the
        names in :attr:`hyperparams` (e.g. ``elr``), scalars or traced arrays.
      update: ``update(grads, state, params, *, rw_key=None, rw_norm=None)
        -> (updates, state)``; ``rw_key`` (a PRNG key) draws the random-walk
        direction and ``rw_norm`` sets its length when the random walk is on;
        both are ignored otherwise.
      lr: ``lr(state)``: the plain learning rate the state realises (for the
        per-group statistics).
      hyperparams: the names ``init`` takes.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[PyTree, Any]]
    lr: Callable[[Any], jax.Array]
    hyperparams: tuple[str, ...]


def random_walk(si_mask: PyTree) -> optax.GradientTransformationExtraArgs:
    """The App. M random-walk baseline as a stateless Optax transformation.

    ``update(grads, state, params, *, rw_key, rw_norm=None)`` returns a standard
    Gaussian direction projected onto each SI group's tangent space and rescaled
    to ``rw_norm`` (a regular run's gradient norm; NaN or None: the joint SI
    norm of ``grads``) (:func:`~three_regimes_jax.engine.diagnostics.tangent_gaussian`),
    so the sphere step that follows has the length the real step would have had.

    Args:
      si_mask: boolean pytree of the SI leaves.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None, *, rw_key=None, rw_norm=None, **extra):
        del extra
        if params is None or rw_key is None:
            raise ValueError("random_walk needs params and rw_key in update()")
        return tangent_gaussian(rw_key, params, updates, si_mask, rw_norm), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def make_optimizer(train: TrainConfig, si_mask: PyTree) -> SweptOptimizer:
    """The optimizer of a training config.

    Today: projected SGD on the total-norm sphere at each member's ELR
    (:func:`~three_regimes_jax.engine.sphere.sphere_sgd`), with the random walk
    chained before it when ``train.random_walk``.

    Args:
      train: the training config.
      si_mask: boolean pytree of the SI leaves.

    Returns:
      The :class:`SweptOptimizer`; ``init(params, elr=...)``.
    """
    sphere = sphere_sgd_swept(si_mask)
    walk = random_walk(si_mask) if train.random_walk else None

    def init(params: PyTree, *, elr: float | jax.Array) -> SphereState:
        return sphere.init(params, elr=elr)

    def update(grads: PyTree, state: SphereState, params: PyTree, *, rw_key=None, rw_norm=None):
        if walk is not None:
            grads, _ = walk.update(
                grads, optax.EmptyState(), params, rw_key=rw_key, rw_norm=rw_norm
            )
        return sphere.update(grads, state, params)

    def lr(state: SphereState) -> jax.Array:
        return elr_to_lr(state.elr, state.radius)

    return SweptOptimizer(init, update, lr, ("elr",))


def with_elr(state: SphereState, elr: float | jax.Array) -> SphereState:
    """The same optimizer state at another ELR (fine-tuning keeps the radius)."""
    return state._replace(elr=jax.numpy.asarray(elr, jax.numpy.float32))
