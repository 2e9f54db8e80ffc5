"""Sharpness and equilibrium measurements of SI networks (paper App. B, Fig. 9-10, App. M).

Every sharpness measure here is a pure, jittable function of one grid member;
``jax.vmap`` (or ``lax.map``) runs it over a grid.  The measures are:

- ``grad_cov_trace``: trace of the (uncentred) mini-batch gradient covariance,
  ``Tr(E_B grad L_B grad L_B^T) = E_B ||grad L_B||^2`` (paper eq. 29).
- ``hessian_trace`` / ``fim_trace``: Hutchinson estimates with Rademacher probes.
- ``hessian_top_eig`` / ``fim_top_eig``: Lanczos with full reorthogonalisation.

Conventions shared by all of them:

- **SI parameters only.**  Derivatives are taken with respect to the SI leaves
  (flattened jointly); non-SI trainable parameters, frozen parameters and the
  BatchNorm running statistics are held fixed.
- **Effective.**  They are measured at the SI parameters rescaled onto the unit
  sphere, ``theta_SI / rho`` with ``rho`` the joint SI norm (the paper's
  footnote 3), so every measure is invariant to ``theta_SI -> c * theta_SI``.
  For an SI loss, ``grad L(theta) = grad L(theta/rho) / rho`` and
  ``H(theta) = H(theta/rho) / rho**2``: the effective gradient norm
  ``||grad L(theta)|| * rho`` of :mod:`three_regimes_jax.engine.sphere` is the gradient
  norm measured here.
- **Train-mode BatchNorm, per mini-batch.**  The subset ``(x, y)`` is cut, in
  order, into ``n // batch_size`` mini-batches of ``batch_size`` examples (the
  last ``n % batch_size`` examples are ignored: pass a subset whose size is a
  multiple of ``batch_size``).  BatchNorm normalises with each mini-batch's own
  statistics, so the loss of the subset is the mean of the mini-batch losses
  ``L(theta) = mean_B L_B(theta)``; the Hessian and the FIM are the means of the
  per-mini-batch matrices, as in the paper's code (``get_info.py --train_mode``).
- **Fisher.**  The FIM is the "true" Fisher (labels sampled from the model, in
  expectation; not the empirical Fisher with the data labels)::

      F = mean_B (1/|B|) sum_{x in B} J_x^T (diag(p_x) - p_x p_x^T) J_x,

  with ``p_x = softmax(z_x)`` and ``J_x`` the Jacobian of the logits ``z_x`` of
  example ``x`` with respect to the SI parameters, computed with the whole
  mini-batch in the forward pass (so ``J_x`` includes the BatchNorm coupling).
  It equals ``E_x E_{y ~ p_x} g g^T`` with ``g = grad log p(y | x)``, and also
  the generalised Gauss-Newton matrix of the cross-entropy.
- **Traces are totals**, not per parameter (the original code's ``eval_trace``
  with unit-norm Gaussian probes returns ``Tr / d``); divide by the number of
  SI parameters to compare with it.

Static arguments (``apply_fn``, ``si_mask``, ``batch_size``, ``n_probes``,
``n_iters``) must be Python values closed over, not traced: ``si_mask`` is a
pytree of Python bools.  :func:`make_sharpness_fn` builds the jitted function
with them bound.

The estimators (Hutchinson, Lanczos) are in :mod:`three_regimes_jax.engine.linalg`;
the equilibrium and trajectory helpers in :mod:`three_regimes_jax.engine.diagnostics`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from three_regimes_jax.engine.batching import batch_mean
from three_regimes_jax.engine.linalg import hutchinson, lanczos_top_eig
from three_regimes_jax.engine.models import FROZEN

PyTree = Any
ApplyFn = Callable[..., jax.Array]

SHARPNESS_KEYS = ("grad_cov_trace", "hessian_trace", "fim_trace", "hessian_top_eig", "fim_top_eig")


# --------------------------------------------------------------------------- the problem


class SharpnessProblem:
    """One member's loss as a function of its unit-norm SI vector ``w``, batch by batch.

    Build it from a member's variables and a fixed subset; its methods are the
    five effective measures (and the matrix-vector products behind them).

    Args:
      apply_fn: ``model.apply``.
      params: trainable parameters.
      batch_stats: BatchNorm running statistics (unused in train mode, kept).
      frozen: frozen parameters.
      si_mask: boolean pytree of SI leaves (static).
      x: subset inputs ``[n, ...]``.
      y: subset integer labels ``[n]``.
      batch_size: mini-batch size (static).

    Attributes:
      w0: ``theta_SI / rho`` flattened, shape ``[d]``.
      x, y: the subset; ``n_batches`` full mini-batches of ``batch_size`` are used.
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        params: PyTree,
        batch_stats: PyTree,
        frozen: PyTree,
        si_mask: PyTree,
        x: jax.Array,
        y: jax.Array,
        batch_size: int,
    ):
        leaves, self._treedef = jax.tree.flatten(params)
        mask = jax.tree.leaves(si_mask)
        if len(mask) != len(leaves):
            raise ValueError(
                f"si_mask has {len(mask)} leaves but params has {len(leaves)}; "
                "build the mask from the same model (init_model(...).si_mask)"
            )
        self._mask = [bool(m) for m in mask]
        if not any(self._mask):
            raise ValueError("si_mask marks no parameter as scale-invariant")
        self._leaves = leaves
        flat, self._unravel = ravel_pytree([p for p, m in zip(leaves, mask, strict=True) if m])
        flat = flat.astype(jnp.float32)
        self.w0 = flat / jnp.linalg.norm(flat)
        self.dim = int(flat.shape[0])
        self._apply_fn = apply_fn
        self._batch_stats = batch_stats
        self._frozen = frozen
        n, bs = int(x.shape[0]), int(batch_size)
        if bs < 1 or n < bs:
            raise ValueError(f"need batch_size >= 1 and at least batch_size examples, got {n}/{bs}")
        self.n_batches = n // bs
        self.batch_size = bs
        self.x, self.y = x, y

    def params(self, w: jax.Array) -> PyTree:
        """The full parameter tree with the SI leaves replaced by ``w``."""
        si = iter(self._unravel(w))
        leaves = [
            next(si).astype(p.dtype) if m else p
            for p, m in zip(self._leaves, self._mask, strict=True)
        ]
        return jax.tree.unflatten(self._treedef, leaves)

    def logits(self, w: jax.Array, xb: jax.Array) -> jax.Array:
        """Train-mode logits ``[batch, classes]`` of one mini-batch (running stats untouched)."""
        variables = {"params": self.params(w), "batch_stats": self._batch_stats}
        variables[FROZEN] = self._frozen
        z = self._apply_fn(variables, xb, train=True)
        return z.astype(jnp.float32)

    def loss(self, w: jax.Array, xb: jax.Array, yb: jax.Array) -> jax.Array:
        """Mean cross-entropy of one mini-batch."""
        z = self.logits(w, xb)
        return optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()

    def batch_mean(self, fn: Callable[[jax.Array, jax.Array], Any]) -> Any:
        """Mean over the full mini-batches of ``fn(xb, yb)`` (a pytree).

        The last partial batch is dropped, so every term of the mean (e.g. of
        ``||grad L_B||^2``) is taken at the same batch size.
        """
        return batch_mean(fn, self.x, self.y, self.batch_size, drop_last=True)

    # ---------------------------------------------------------------- matrix-vector products

    def hvp(self, v: jax.Array) -> jax.Array:
        """Hessian-vector product ``H v`` (mean over mini-batches), forward-over-reverse."""
        w0 = self.w0

        def fn(xb, yb):
            grad = jax.grad(self.loss)
            return jax.jvp(lambda w: grad(w, xb, yb), (w0,), (v,))[1]

        return self.batch_mean(fn)

    def fvp(self, v: jax.Array) -> jax.Array:
        """Fisher-vector product ``F v`` (mean over mini-batches)."""
        w0 = self.w0

        def fn(xb, yb):
            del yb
            z, vjp = jax.vjp(lambda w: self.logits(w, xb), w0)
            jv = jax.jvp(lambda w: self.logits(w, xb), (w0,), (v,))[1]
            return vjp(_softmax_hessian_vp(z, jv) / z.shape[0])[0]

        return self.batch_mean(fn)

    def hessian_quad(self, vs: jax.Array) -> jax.Array:
        """``v^T H v`` for each row of ``vs`` ``[k, d]``; returns ``[k]``."""
        w0 = self.w0

        def fn(xb, yb):
            grad = jax.grad(self.loss)
            hv = jax.vmap(lambda v: jax.jvp(lambda w: grad(w, xb, yb), (w0,), (v,))[1])(vs)
            return jnp.sum(vs * hv, axis=-1)

        return self.batch_mean(fn)

    def fisher_quad(self, vs: jax.Array) -> jax.Array:
        """``v^T F v`` for each row of ``vs`` ``[k, d]`` from forward-mode products only."""
        w0 = self.w0

        def fn(xb, yb):
            del yb
            z, lin = jax.linearize(lambda w: self.logits(w, xb), w0)
            jv = jax.vmap(lin)(vs)  # [k, batch, classes]
            return jnp.sum(jv * _softmax_hessian_vp(z, jv), axis=(-2, -1)) / z.shape[0]

        return self.batch_mean(fn)

    # ---------------------------------------------------------------- the five measures

    def grad_cov_trace(self) -> jax.Array:
        """``Tr(E_B grad L_B grad L_B^T) = E_B ||grad L_B||^2`` over the mini-batches (eq. 29)."""
        return self.batch_mean(
            lambda xb, yb: jnp.sum(jnp.square(jax.grad(self.loss)(self.w0, xb, yb)))
        )

    def hessian_trace(self, key: jax.Array, n_probes: int = 8) -> jax.Array:
        """Hutchinson estimate of the Hessian trace (``n_probes`` Rademacher probes)."""
        return hutchinson(self.hessian_quad, self.dim, key, n_probes)

    def fim_trace(self, key: jax.Array, n_probes: int = 8) -> jax.Array:
        """Hutchinson estimate of the (true) Fisher trace."""
        return hutchinson(self.fisher_quad, self.dim, key, n_probes)

    def hessian_top_eig(self, key: jax.Array, n_iters: int = 20) -> jax.Array:
        """Largest Ritz value of the Hessian after ``n_iters`` Lanczos steps.

        A lower bound that converges fast to the top eigenvalue when it is well
        separated; ``n_iters`` is capped at the number of SI parameters.
        """
        return lanczos_top_eig(self.hvp, self.dim, key, n_iters)

    def fim_top_eig(self, key: jax.Array, n_iters: int = 20) -> jax.Array:
        """Largest Ritz value of the (true) Fisher after ``n_iters`` Lanczos steps."""
        return lanczos_top_eig(self.fvp, self.dim, key, n_iters)


def _softmax_hessian_vp(z: jax.Array, u: jax.Array) -> jax.Array:
    """``(diag(p) - p p^T) u`` per example, ``p = softmax(z)``; ``u`` may have leading axes."""
    p = jax.nn.softmax(z, axis=-1)
    return p * (u - jnp.sum(p * u, axis=-1, keepdims=True))


# --------------------------------------------------------------------------- all measures


def sharpness(
    apply_fn: ApplyFn,
    params: PyTree,
    batch_stats: PyTree,
    frozen: PyTree,
    si_mask: PyTree,
    x: jax.Array,
    y: jax.Array,
    *,
    batch_size: int,
    key: jax.Array,
    n_probes: int = 8,
    n_iters: int = 20,
) -> dict[str, jax.Array]:
    """All five effective sharpness measures of one member.

    ``key`` is split into four: Hessian probes, Fisher probes, Hessian Lanczos
    start, Fisher Lanczos start (in that order), so each entry equals the
    :class:`SharpnessProblem` method called with the corresponding sub-key.

    Args:
      apply_fn: ``model.apply``.
      params: trainable parameters.
      batch_stats: BatchNorm running statistics.
      frozen: frozen parameters.
      si_mask: boolean pytree of SI leaves (static).
      x: subset inputs ``[n, ...]``.
      y: subset integer labels ``[n]``.
      batch_size: mini-batch size (static).
      key: PRNG key.
      n_probes: Hutchinson probes (static).
      n_iters: Lanczos steps (static).

    Returns:
      ``{"grad_cov_trace", "hessian_trace", "fim_trace", "hessian_top_eig",
      "fim_top_eig"}``, each a float32 scalar.
    """
    pb = SharpnessProblem(apply_fn, params, batch_stats, frozen, si_mask, x, y, batch_size)
    k_ht, k_ft, k_he, k_fe = jax.random.split(key, 4)
    return {
        "grad_cov_trace": pb.grad_cov_trace(),
        "hessian_trace": pb.hessian_trace(k_ht, n_probes),
        "fim_trace": pb.fim_trace(k_ft, n_probes),
        "hessian_top_eig": pb.hessian_top_eig(k_he, n_iters),
        "fim_top_eig": pb.fim_top_eig(k_fe, n_iters),
    }


def make_sharpness_fn(
    apply_fn: ApplyFn,
    si_mask: PyTree,
    *,
    batch_size: int,
    n_probes: int = 8,
    n_iters: int = 20,
    grid: bool = False,
) -> Callable[..., dict[str, jax.Array]]:
    """Jitted :func:`sharpness` with the static arguments bound.

    Args:
      apply_fn: ``model.apply``.
      si_mask: boolean pytree of SI leaves.
      batch_size: mini-batch size.
      n_probes: Hutchinson probes.
      n_iters: Lanczos steps.
      grid: vmap over a leading grid axis of ``params``, ``batch_stats`` and
        ``frozen`` (data and key shared by all members; results ``[G]``).

    Returns:
      ``fn(params, batch_stats, frozen, x, y, key) -> dict`` (jitted).
    """
    fn = functools.partial(
        _sharpness_positional,
        apply_fn,
        si_mask,
        batch_size=int(batch_size),
        n_probes=int(n_probes),
        n_iters=int(n_iters),
    )
    if grid:
        fn = jax.vmap(fn, in_axes=(0, 0, 0, None, None, None))
    return jax.jit(fn)


def _sharpness_positional(apply_fn, si_mask, params, batch_stats, frozen, x, y, key, **kw):
    return sharpness(apply_fn, params, batch_stats, frozen, si_mask, x, y, key=key, **kw)
