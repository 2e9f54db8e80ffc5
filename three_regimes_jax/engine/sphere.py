"""Training on the sphere: fixed-ELR projected SGD, projection, SI masks, per-group stats.

The scale-invariant (SI) parameters of a network are trained on the sphere of
radius ``rho`` (their joint L2 norm).  One step of projected SGD at effective
learning rate (ELR) ``elr`` is::

    lr = elr * rho**2
    theta_hat = theta - lr * grad
    theta_new = rho * theta_hat / ||theta_hat||

where the norm runs over all SI leaves jointly.  Non-SI leaves are frozen.

Everything here is an Optax ``GradientTransformation`` or a pure jittable
function.  The swept hyperparameters (``elr``, the radius) live in the
optimizer *state*, not in Python closures, so a grid of members stacked along a
leading axis carries one value per member and ``jax.vmap`` sweeps them without
recompiling.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.core import meta

PyTree = Any


# --------------------------------------------------------------------------- SI declaration


class ScaleInvariant(struct.PyTreeNode, meta.AxisMetadata):
    """Box that a model puts around a parameter to declare it scale-invariant.

    Models create SI parameters with ``self.param(name, scale_invariant(init), ...)``.
    ``model.init`` then returns boxed leaves; :func:`split_si` turns them into a
    plain parameter tree plus a boolean ``si_mask`` of the same structure.  The
    mask therefore comes from the model's own declaration, never from parameter
    names.
    """

    value: Any
    joint: str | None = struct.field(pytree_node=False, default=None)

    def unbox(self) -> Any:
        """Returns the wrapped parameter."""
        return self.value

    def replace_boxed(self, val: Any) -> ScaleInvariant:
        """Returns a box of the same kind holding ``val``."""
        return self.replace(value=val)

    def add_axis(self, index: int, params: dict[Any, Any]) -> ScaleInvariant:
        """SI-ness does not depend on axes (needed by ``nn.vmap``/``nn.scan``)."""
        del index, params
        return self

    def remove_axis(self, index: int, params: dict[Any, Any]) -> ScaleInvariant:
        """See :meth:`add_axis`."""
        del index, params
        return self


def scale_invariant(init_fn, joint: str | None = None):
    """Wraps a Flax initializer so that the parameter it creates is declared SI.

    Args:
      init_fn: the initializer.
      joint: name of the set of parameters this one is SI jointly with (see
        :class:`ScaleInvariant`); None: individually SI.
    """

    def wrapped(*args, **kwargs):
        return ScaleInvariant(init_fn(*args, **kwargs), joint)

    return wrapped


def _is_si_box(x: Any) -> bool:
    return isinstance(x, ScaleInvariant)


def split_si(boxed_params: PyTree) -> tuple[PyTree, PyTree]:
    """Separates declared SI boxes from a freshly initialised parameter tree.

    Args:
      boxed_params: the ``"params"`` collection returned by ``model.init``.

    Returns:
      ``(params, si_mask)``: the unboxed parameters and a pytree of Python bools
      with the same structure, True exactly for the leaves declared SI.
    """
    si_mask = jax.tree.map(_is_si_box, boxed_params, is_leaf=_is_si_box)
    params = meta.unbox(boxed_params)
    return params, si_mask


def si_sets(boxed_params: PyTree) -> list[str | None]:
    """The ``joint`` set name of each SI leaf, in :func:`si_group_names` order.

    ``None`` marks an individually SI leaf (see :class:`ScaleInvariant`).
    """
    boxes = jax.tree.leaves(boxed_params, is_leaf=_is_si_box)
    return [b.joint for b in boxes if _is_si_box(b)]


def individually_si(sets: list[str | None]) -> np.ndarray:
    """Bool ``[n_groups]``: True for the groups that are SI on their own.

    A group is individually SI when it is declared so (``None``) or when it is
    the only member of its joint set.
    """
    counts: dict[str, int] = {}
    for name in sets:
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return np.array([n is None or counts[n] == 1 for n in sets], bool)


def _si_leaves(tree: PyTree, si_mask: PyTree) -> list[jax.Array]:
    leaves = jax.tree.leaves(tree)
    mask = jax.tree.leaves(si_mask)
    if len(leaves) != len(mask):
        raise ValueError(
            f"si_mask has {len(mask)} leaves but the tree has {len(leaves)}; "
            "build the mask from the same model with split_si"
        )
    return [leaf for leaf, m in zip(leaves, mask, strict=True) if m]


def si_group_names(si_mask: PyTree) -> list[str]:
    """Names of the SI groups (one per SI leaf), e.g. ``"Dense_0/kernel"``."""
    paths = jax.tree_util.tree_flatten_with_path(si_mask)[0]
    return ["/".join(str(getattr(k, "key", k)) for k in path) for path, m in paths if m]


def _sq_norm(leaves: list[jax.Array]) -> jax.Array:
    return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)


def si_norm(params: PyTree, si_mask: PyTree) -> jax.Array:
    """Joint L2 norm ``rho`` of all SI leaves."""
    return jnp.sqrt(_sq_norm(_si_leaves(params, si_mask)))


def elr_to_lr(elr: jax.Array | float, radius: jax.Array | float) -> jax.Array:
    """Learning rate that realises ELR ``elr`` on the sphere of radius ``radius``."""
    return jnp.asarray(elr, jnp.float32) * jnp.square(jnp.asarray(radius, jnp.float32))


# --------------------------------------------------------------------------- projection


def _project_updates(
    theta_hat: PyTree, params: PyTree, updates: PyTree, si_mask: PyTree, radius: jax.Array
) -> PyTree:
    """Rescales the SI part of ``theta_hat`` onto the sphere; returns updates.

    For SI leaves the update is ``radius * theta_hat / ||theta_hat_SI|| - theta``;
    non-SI leaves keep ``updates`` unchanged.
    """
    scale = radius / jnp.sqrt(_sq_norm(_si_leaves(theta_hat, si_mask)))
    return jax.tree.map(
        lambda m, h, p, u: (scale * h - p).astype(p.dtype) if m else u,
        si_mask,
        theta_hat,
        params,
        updates,
    )


class ProjectionState(NamedTuple):
    """State of :func:`project_to_sphere`: the radius of the sphere."""

    radius: jax.Array


def _initial_radius(radius, params, si_mask) -> jax.Array:
    if radius is None:
        return si_norm(params, si_mask)
    return jnp.asarray(radius, jnp.float32)


def project_to_sphere(si_mask: PyTree, radius: float | jax.Array | None = None):
    """Projects the SI parameters back onto the sphere after any other update.

    Chain it after an optimizer, e.g. ``optax.chain(optax.sgd(lr, momentum=0.9),
    project_to_sphere(si_mask))``: the SI part of ``params + updates`` is rescaled
    to norm ``radius`` (joint over all SI leaves); non-SI updates pass through.

    Note (from the paper, Sec. 2 and App. A): with momentum or adaptive
    optimizers the effective learning rate is *not* fixed by the learning rate
    and the radius alone, since the step also depends on the optimizer's
    history, so "training at a fixed ELR" is ambiguous there.  Use
    :func:`sphere_sgd` for the paper's fixed-ELR setting.

    Args:
      si_mask: boolean pytree (see :func:`split_si`).
      radius: sphere radius; ``None`` takes the SI norm of the params passed to
        ``init``.  May be a traced array.

    Returns:
      An ``optax.GradientTransformation``; its update needs ``params``.
    """

    def init_fn(params):
        return ProjectionState(radius=_initial_radius(radius, params, si_mask))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_to_sphere needs params in update()")
        theta_hat = jax.tree.map(lambda p, u: p + u, params, updates)
        return _project_updates(theta_hat, params, updates, si_mask, state.radius), state

    return optax.GradientTransformation(init_fn, update_fn)


# --------------------------------------------------------------------------- fixed-ELR SGD


class SphereState(NamedTuple):
    """State of :func:`sphere_sgd`: the member's ELR and sphere radius (scalars)."""

    elr: jax.Array
    radius: jax.Array


class SweptTransformation(NamedTuple):
    """An Optax-style transformation whose ``init`` takes the swept hyperparameters.

    Attributes:
      init: ``init(params, **hyperparams) -> state``.
      update: ``update(updates, state, params) -> (updates, state)``.
    """

    init: Any
    update: Any


def sphere_sgd_swept(
    si_mask: PyTree, radius: float | jax.Array | None = None
) -> SweptTransformation:
    """Projected SGD on the total-norm sphere with the ELR given per member to ``init``.

    ``init(params, elr=...)`` stores ``elr`` and the radius in a
    :class:`SphereState`; ``update`` reads both from the state.  One instance
    serves a whole grid (see :func:`sphere_sgd` for the update).

    Args:
      si_mask: boolean pytree marking SI leaves (see :func:`split_si`).
      radius: sphere radius ``rho``; ``None`` (default) takes the norm of the SI
        parameters passed to ``init``, i.e. the initial SI norm.

    Returns:
      A :class:`SweptTransformation`.
    """

    def init_fn(params, *, elr):
        return SphereState(
            elr=jnp.asarray(elr, jnp.float32), radius=_initial_radius(radius, params, si_mask)
        )

    def update_fn(grads, state, params=None):
        if params is None:
            raise ValueError("sphere_sgd needs params in update()")
        lr = elr_to_lr(state.elr, state.radius)
        new, _ = sphere_step(params, grads, si_mask, lr, state.radius)
        return jax.tree.map(lambda n, p: n - p, new, params), state

    return SweptTransformation(init_fn, update_fn)


class LeafSums(NamedTuple):
    """Per-SI-leaf sums of one step, ``[n_groups]`` each (float32).

    Attributes:
      pp: ``||theta_i||**2``.
      gg: ``||g_i||**2``.
      pg: ``<theta_i, g_i>``.
    """

    pp: jax.Array
    gg: jax.Array
    pg: jax.Array


def leaf_sums(params: PyTree, grads: PyTree, si_mask: PyTree) -> LeafSums:
    """:class:`LeafSums` of the SI leaves (one fused pass over ``params`` and ``grads``)."""
    f32 = [
        (p.astype(jnp.float32), g.astype(jnp.float32))
        for p, g in zip(_si_leaves(params, si_mask), _si_leaves(grads, si_mask), strict=True)
    ]
    return LeafSums(
        pp=jnp.stack([jnp.sum(p * p) for p, _ in f32]),
        gg=jnp.stack([jnp.sum(g * g) for _, g in f32]),
        pg=jnp.stack([jnp.sum(p * g) for p, g in f32]),
    )


def sphere_step(
    params: PyTree,
    grads: PyTree,
    si_mask: PyTree,
    lr: jax.Array,
    radius: jax.Array,
    sums: LeafSums | None = None,
) -> tuple[PyTree, jax.Array]:
    """One projected SGD step on the total sphere, written as one pass over the parameters.

    ``theta_new = radius * h / ||h||`` with ``h = theta - lr * g`` on the SI
    leaves (non-SI leaves unchanged).  ``||h||**2 = pp - 2 lr pg + lr**2 gg``
    is exact algebra on the sums of :func:`leaf_sums`, which the per-group
    statistics need anyway, so the step reads ``theta`` and ``g`` once more and
    writes ``theta_new`` once, instead of materialising ``h``, reducing it and
    rescaling it (``benchmarks/profile_step.py``).

    Args:
      params: parameters ``theta``.
      grads: gradients (or any step direction) ``g``.
      si_mask: boolean pytree of the SI leaves.
      lr: the plain learning rate ``elr * radius**2``.
      radius: the sphere's radius.
      sums: :func:`leaf_sums` of ``params`` and ``grads`` (computed if None).

    Returns:
      ``(theta_new, cos)``: the new parameters and the cosine between the SI
      weights before and after the step (as ``diagnostics.adjacent_cos``).
    """
    sums = leaf_sums(params, grads, si_mask) if sums is None else sums
    lr = jnp.asarray(lr, jnp.float32)
    pp, gg, pg = jnp.sum(sums.pp), jnp.sum(sums.gg), jnp.sum(sums.pg)
    hh = pp - 2.0 * lr * pg + lr * lr * gg
    scale = jnp.asarray(radius, jnp.float32) * jax.lax.rsqrt(hh)
    new = jax.tree.map(
        lambda m, p, g: (scale * (p - lr * g)).astype(p.dtype) if m else p, si_mask, params, grads
    )
    return new, (pp - lr * pg) * jax.lax.rsqrt(pp * hh)


def sphere_sgd(elr: float | jax.Array, si_mask: PyTree, radius: float | jax.Array | None = None):
    """Projected SGD on the total-norm sphere at a fixed effective learning rate.

    ``theta_hat = theta - elr * radius**2 * grad`` on the SI leaves, then the SI
    part is rescaled to norm ``radius``.  Non-SI leaves get zero updates.  The
    returned updates are ``theta_new - theta``, so ``optax.apply_updates`` works.

    ``elr`` and ``radius`` are stored in the state by ``init`` and read from the
    state by ``update``: a grid of members (state stacked along axis 0) carries
    one ELR per member.  Both may be traced arrays (``jax.vmap`` over ``elr``
    works).  Grids use :func:`sphere_sgd_swept`, which takes the ELR in ``init``.

    Args:
      elr: effective learning rate, > 0.
      si_mask: boolean pytree marking SI leaves (see :func:`split_si`).
      radius: sphere radius ``rho``; ``None`` (default) takes the norm of the SI
        parameters passed to ``init``, i.e. the initial SI norm.

    Returns:
      An ``optax.GradientTransformation``; its update needs ``params``.
    """
    swept = sphere_sgd_swept(si_mask, radius)
    return optax.GradientTransformation(lambda params: swept.init(params, elr=elr), swept.update)
