"""The optimizer factory: one transformation per training config, swept values in its state.

:func:`make_optimizer` turns a :class:`~three_regimes_jax.config.TrainConfig`
into a :class:`SweptOptimizer`: Optax-style ``init``/``update`` functions whose
swept hyperparameters (the ELR today) are given per member to ``init`` and
stored in the state, as ``optax.inject_hyperparams`` does.  One instance
serves a whole grid: ``update`` reads each member's values from its state, so
``jax.vmap`` over a stacked state sweeps them, and nothing about a member is a
Python constant in the compiled step.

Two training modes (``train.mode``):

- ``sphere``: projected SGD on the total-norm sphere at each member's fixed
  ELR (:func:`~three_regimes_jax.engine.sphere.sphere_sgd_swept`);
- ``whole``: SGD in the whole parameter space as PyTorch's ``torch.optim.SGD``
  (the official code's ``fix_lr`` mode): coupled L2 weight decay
  ``d = g + wd * theta``, heavy-ball momentum ``buf = mu * buf + d``
  (dampening 0), ``theta -= lr * buf`` (:func:`whole_sgd_swept`).  Each
  member's LR, weight decay, momentum and non-SI LR are traced state; the LR
  schedule is a traced factor ``lr_scale`` passed to ``update``
  (:func:`lr_schedule`), so members with different initial LRs share one
  compiled step.

The random-walk baseline of App. M is an Optax transformation
(:func:`random_walk`) chained before the sphere step: it replaces the gradient
with a random tangent direction of the same length.  It is stateless, so the
optimizer state is the sphere step's own state
(:class:`~three_regimes_jax.engine.sphere.SphereState`) with or without it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from three_regimes_jax.config import TrainConfig
from three_regimes_jax.elr_schedules import parse_schedule
from three_regimes_jax.engine.diagnostics import tangent_gaussian
from three_regimes_jax.engine.schedules import ScheduledState
from three_regimes_jax.engine.schedules import factor as schedule_factor
from three_regimes_jax.engine.sphere import (
    LeafSums,
    SphereState,
    elr_to_lr,
    sphere_sgd_swept,
    sphere_step,
)
from three_regimes_jax.engine.sphere_opt import sphere_optimizer

PyTree = Any


class SweptOptimizer(NamedTuple):
    """An optimizer whose swept hyperparameters live in its state.

    Attributes:
      init: ``init(params, **hyperparams) -> state``; ``hyperparams`` are the
        names in :attr:`hyperparams` (e.g. ``elr``), scalars or traced arrays.
      update: ``update(grads, state, params, *, rw_key=None, rw_norm=None,
        lr_scale=1.0) -> (updates, state)``; ``rw_key`` (a PRNG key) draws the
        random-walk direction and ``rw_norm`` sets its length when the random
        walk is on; both are ignored otherwise.  ``lr_scale`` is the LR
        schedule's factor at this step (whole space only).
      lr: ``lr(state, lr_scale=1.0)``: the plain learning rate of the SI
        parameters the state realises (for the per-group statistics).
      hyperparams: the names ``init`` takes.
      apply: optional fused step ``apply(grads, state, params, sums) -> (params,
        state, cos)`` (and ``lr_scale=``) returning the new parameters directly (and the cosine
        between the SI weights before and after) from the step's
        :class:`~three_regimes_jax.engine.sphere.LeafSums`; the same step as
        ``update`` followed by ``optax.apply_updates``, in fewer passes over
        the parameters.  None where there is no such shortcut.
      prepare: optional ``prepare(params) -> params`` putting fresh weights on
        the optimizer's sphere before ``init`` (``--sphere filter``); None: as is.
      elr_factor: optional ``elr_factor(state, t)``: the member's ELR schedule
        factor at fractional epoch ``t`` (``--elr-schedules``), which the train
        step passes on as ``lr_scale``; None: no schedule.
    """

    init: Callable[..., Any]
    update: Callable[..., tuple[PyTree, Any]]
    lr: Callable[[Any], jax.Array]
    hyperparams: tuple[str, ...]
    apply: Callable[..., tuple[PyTree, Any, jax.Array]] | None = None
    prepare: Callable[[PyTree], PyTree] | None = None
    elr_factor: Callable[[Any, jax.Array], jax.Array] | None = None


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


class WholeState(NamedTuple):
    """State of :func:`whole_sgd_swept`: one member's hyperparameters and momentum buffers.

    Attributes:
      lr: the initial (unscheduled) learning rate.
      weight_decay: coupled L2 weight decay.
      momentum: heavy-ball momentum ``mu``.
      noninv_lr: LR of the non-SI parameters (``-1``: ``lr``; ``0``: frozen).
      trace: the momentum buffers, one per parameter.
    """

    lr: jax.Array
    weight_decay: jax.Array
    momentum: jax.Array
    noninv_lr: jax.Array
    trace: PyTree


def whole_sgd_swept(si_mask: PyTree, *, momentum: float = 0.0, noninv_lr: float = -1.0):
    """SGD in the whole parameter space, as ``torch.optim.SGD``, with its values in the state.

    ``init(params, *, lr, weight_decay)``; ``update(grads, state, params, *,
    lr_scale=1.0)`` computes, for every parameter (SI or not, as the official
    code's weight decay applies to all)::

        d = g + weight_decay * theta
        buf = momentum * buf + d          # PyTorch: dampening 0, buf_0 = d
        theta -= lr * lr_scale * buf       # non-SI: noninv_lr * lr_scale

    (with ``noninv_lr = -1`` the non-SI parameters use ``lr``; ``0`` freezes
    them).  As PyTorch's CosineAnnealingLR scales every parameter group,
    ``lr_scale`` scales the non-SI LR too.

    Args:
      si_mask: boolean pytree of the SI leaves.
      momentum: ``mu`` in ``[0, 1)``.
      noninv_lr: the non-SI LR.

    Returns:
      An object with ``init`` and ``update`` (Optax-style).
    """

    def init_fn(params, *, lr, weight_decay):
        f32 = jax.numpy.float32
        return WholeState(
            lr=jax.numpy.asarray(lr, f32),
            weight_decay=jax.numpy.asarray(weight_decay, f32),
            momentum=jax.numpy.asarray(momentum, f32),
            noninv_lr=jax.numpy.asarray(noninv_lr, f32),
            trace=jax.tree.map(jax.numpy.zeros_like, params),
        )

    def update_fn(grads, state: WholeState, params, *, lr_scale=1.0):
        d = jax.tree.map(lambda g, p: g + state.weight_decay * p, grads, params)
        trace = jax.tree.map(lambda b, x: state.momentum * b + x, state.trace, d)
        lr_si = state.lr * lr_scale
        lr_non = jax.numpy.where(state.noninv_lr < 0, state.lr, state.noninv_lr) * lr_scale
        updates = jax.tree.map(
            lambda m, b: (-(lr_si if m else lr_non) * b).astype(b.dtype), si_mask, trace
        )
        return updates, state._replace(trace=trace)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def lr_schedule(name: str, epochs: int) -> Callable[[jax.Array], jax.Array]:
    """The LR factor of epoch ``e`` (from 0) as a traced function.

    ``constant``: 1.  ``cosine``: PyTorch's ``CosineAnnealingLR(T_max=epochs)``
    stepped once per epoch, ``(1 + cos(pi * e / epochs)) / 2``.

    Raises:
      ValueError: an unknown schedule name.
    """
    if name == "constant":
        return lambda e: jax.numpy.ones((), jax.numpy.float32)
    if name == "cosine":
        t = float(max(int(epochs), 1))

        def cosine(e):
            e = jax.numpy.asarray(e, jax.numpy.float32)
            return (1.0 + jax.numpy.cos(jax.numpy.pi * e / t)) / 2.0

        return cosine
    raise ValueError(f"unknown LR schedule {name!r}")


def make_optimizer(train: TrainConfig, si_mask: PyTree) -> SweptOptimizer:
    """The optimizer of a training config.

    ``train.mode == "sphere"``: projected SGD on the total-norm sphere at each
    member's ELR (:func:`~three_regimes_jax.engine.sphere.sphere_sgd`), with the
    random walk chained before it when ``train.random_walk``;
    ``init(params, elr=...)``.  ``"whole"``: :func:`whole_sgd_swept` with the
    config's momentum and non-SI LR; ``init(params, lr=..., weight_decay=...)``.

    Args:
      train: the training config.
      si_mask: boolean pytree of the SI leaves.

    Returns:
      The :class:`SweptOptimizer`.
    """
    if train.mode == "whole":
        whole = whole_sgd_swept(si_mask, momentum=train.momentum, noninv_lr=train.noninv_lr)

        def update_whole(grads, state, params, *, rw_key=None, rw_norm=None, lr_scale=1.0):
            del rw_key, rw_norm
            return whole.update(grads, state, params, lr_scale=lr_scale)

        def lr_whole(state: WholeState, lr_scale=1.0) -> jax.Array:
            return state.lr * lr_scale

        return SweptOptimizer(whole.init, update_whole, lr_whole, ("lr", "weight_decay"))
    if train.elr_schedules != ("constant",):
        plain = dataclasses.replace(train, elr_schedules=("constant",))
        return scheduled(make_optimizer(plain, si_mask), train.epochs)
    if train.optimizer != "sgd" or train.sphere != "total":
        return _other_sphere_optimizer(train, si_mask)
    sphere = sphere_sgd_swept(si_mask)
    walk = random_walk(si_mask) if train.random_walk else None

    def init(params: PyTree, *, elr: float | jax.Array) -> SphereState:
        return sphere.init(params, elr=elr)

    def update(
        grads: PyTree,
        state: SphereState,
        params: PyTree,
        *,
        rw_key=None,
        rw_norm=None,
        lr_scale=1.0,
        **_,
    ):
        if walk is not None:
            grads, _ = walk.update(
                grads, optax.EmptyState(), params, rw_key=rw_key, rw_norm=rw_norm
            )
        updates, _ = sphere.update(grads, state._replace(elr=state.elr * lr_scale), params)
        return updates, state

    def lr(state: SphereState, lr_scale=1.0) -> jax.Array:
        return elr_to_lr(state.elr, state.radius) * lr_scale

    def apply(grads: PyTree, state: SphereState, params: PyTree, sums: LeafSums, lr_scale=1.0):
        new, cos = sphere_step(params, grads, si_mask, lr(state, lr_scale), state.radius, sums)
        return new, state, cos

    return SweptOptimizer(init, update, lr, ("elr",), None if walk is not None else apply)


def _other_sphere_optimizer(train: TrainConfig, si_mask: PyTree) -> SweptOptimizer:
    """An ``--optimizer`` or ``--sphere`` other than the paper's (``engine.sphere_opt``)."""
    opt = sphere_optimizer(
        train.optimizer,
        si_mask,
        sphere=train.sphere,
        momentum=train.momentum,
        betas=tuple(train.betas),
        retraction=train.retraction,
    )

    def update(grads, state, params, *, rw_key=None, rw_norm=None, lr_scale=1.0):
        del rw_key, rw_norm
        updates, new = opt.update(grads, state._replace(elr=state.elr * lr_scale), params)
        return updates, new._replace(elr=state.elr)

    def lr(state, lr_scale=1.0):
        return opt.lr(state) * lr_scale

    return SweptOptimizer(opt.init, update, lr, ("elr",), None, opt.prepare)


def scheduled(opt: SweptOptimizer, epochs: int) -> SweptOptimizer:
    """``opt`` with a per-member ELR schedule in its state (``--elr-schedules``).

    ``init(params, *, elr, schedule="constant")`` wraps ``opt``'s state in a
    :class:`~three_regimes_jax.engine.schedules.ScheduledState`;
    ``elr_factor(state, t)`` is the schedule's factor at fractional epoch ``t``
    of ``epochs`` (:func:`~three_regimes_jax.engine.schedules.factor`), which
    the train step passes to ``lr``/``update``/``apply`` as ``lr_scale``.
    """

    def init(params, *, elr, schedule="constant"):
        kind, args = parse_schedule(schedule, float(elr))
        inner = opt.init(params, elr=elr)
        return ScheduledState(inner, jax.numpy.int32(kind), jax.numpy.asarray(args))

    def update(grads, state, params, **kw):
        updates, inner = opt.update(grads, state.inner, params, **kw)
        return updates, state._replace(inner=inner)

    def lr(state, lr_scale=1.0):
        return opt.lr(state.inner, lr_scale)

    apply = None
    if opt.apply is not None:

        def apply(grads, state, params, sums, lr_scale=1.0):
            new, inner, cos = opt.apply(grads, state.inner, params, sums, lr_scale=lr_scale)
            return new, state._replace(inner=inner), cos

    def elr_factor(state, t):
        return schedule_factor(state.kind, state.args, t, epochs)

    hyper = (*opt.hyperparams, "schedule")
    return SweptOptimizer(init, update, lr, hyper, apply, opt.prepare, elr_factor)


def with_elr(state: SphereState, elr: float | jax.Array) -> SphereState:
    """The same optimizer state at another ELR (fine-tuning keeps the radius)."""
    return state._replace(elr=jax.numpy.asarray(elr, jax.numpy.float32))
