"""The grid trainer: G models (ELRs x seeds) trained by one compiled epoch.

A :class:`GridState` is one pytree whose every leaf has a leading grid axis
``G``.  :class:`GridTrainer` compiles two functions once per shape:

- ``train_epoch(state, x, y, epoch)``: one permutation of the training set per
  member (drawn from the member's data key folded with the epoch number;
  members with the same seed share it), ``lax.scan`` over the mini-batches,
  then one extra step on the last partial batch unless ``drop_last`` (PyTorch's
  ``DataLoader`` keeps it).  Returns per-member means over the epoch's
  mini-batches.
- ``evaluate(state, x_train, y_train, x_test, y_test)``: train loss/accuracy
  with train-mode BN (batch statistics, running statistics untouched), as the
  paper's ``get_info.py --train_mode``; test loss/accuracy with eval-mode BN.

Members are run either with ``jax.vmap`` (``strategy="vmap"``: one batched
computation, the fast path for dense models and on GPU/TPU) or one after
another inside the same jit with ``lax.map`` (``strategy="map"``: faster for
convolutions on XLA:CPU, where vmapped convs become grouped convolutions).
Both give the same numbers up to float reassociation; see ``benchmarks/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax import struct

from three_regimes_jax.diagnostics import adjacent_cos, tangent_gaussian
from three_regimes_jax.errors import UserError
from three_regimes_jax.metrics import sharpness
from three_regimes_jax.models import FROZEN, init_model
from three_regimes_jax.sphere import elr_to_lr, group_stats, si_group_names, si_norm, sphere_sgd

STRATEGIES = ("auto", "vmap", "map")
# Folded into a member's data key to draw the random-walk directions.
RANDOM_WALK_SALT = 0x52574B


@struct.dataclass
class GridState:
    """State of a grid of G members; every leaf has a leading axis of size G.

    Attributes:
      params: trainable parameters.
      batch_stats: BatchNorm running statistics.
      frozen: frozen (non-trainable) parameters, e.g. the last layer.
      opt_state: optimizer state (``SphereState``: per-member ``elr`` and ``radius``).
      step: number of optimizer steps taken, ``int32 [G]``.
      data_key: raw PRNG key data ``uint32 [G, 2]`` of each member's batch order.
    """

    params: Any
    batch_stats: Any
    frozen: Any
    opt_state: Any
    step: jax.Array
    data_key: jax.Array

    @property
    def size(self) -> int:
        """Number of members G."""
        return int(self.step.shape[0])


def member(tree: Any, i: int) -> Any:
    """Member ``i`` of a grid pytree (drops the leading axis)."""
    return jax.tree.map(lambda x: x[i], tree)


def stack(members: Sequence[Any]) -> Any:
    """Stacks member pytrees of identical structure along a new leading grid axis."""
    if not members:
        raise ValueError("stack() needs at least one member")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *members)


def shard_grid(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """Places a grid pytree with its leading axis split across ``devices``.

    Under ``jit`` the vmapped computation is then partitioned member-wise
    (SPMD): each device trains its share of the grid.  Returns ``tree``
    unchanged with one device or when G is not divisible by the device count.

    Args:
      tree: pytree whose leaves have a leading grid axis G.
      devices: devices to use (default: all).

    Returns:
      The same pytree, sharded.
    """
    devices = list(devices or jax.devices())
    g = jax.tree.leaves(tree)[0].shape[0]
    if len(devices) < 2 or g % len(devices):
        return tree
    mesh = jax.sharding.Mesh(np.array(devices), ("grid",))
    spec = jax.sharding.PartitionSpec("grid")
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))


def choose_strategy(strategy: str, model: nn.Module, backend: str | None = None) -> str:
    """Resolves ``"auto"``: ``map`` for conv models on CPU, else ``vmap``.

    Measured in ``benchmarks/RESULTS.md``: on XLA:CPU a vmapped ConvNetSI step is
    several times slower than running members one after another, while dense
    models vmap well.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    is_conv = type(model).__name__.startswith("ConvNet")
    return "map" if backend == "cpu" and is_conv else "vmap"


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


class GridTrainer:
    """Compiled training and evaluation of a grid of one model architecture.

    Args:
      model: a Flax module called as ``model.apply(vars, x, train=...)``.
      si_mask: boolean pytree marking the SI parameters.
      batch_size: mini-batch size.
      strategy: ``"vmap"``, ``"map"`` or ``"auto"`` (see :func:`choose_strategy`).
      drop_last: drop the last partial batch of each epoch (default keeps it,
        like PyTorch's DataLoader).
      eval_batch_size: batch size of the evaluation passes; defaults to
        ``batch_size`` (train-mode BN statistics depend on it).
      random_walk: the random-walk baseline of App. M: every step replaces the
        SI gradient with a Gaussian direction in the tangent space of each SI
        group, rescaled to the real gradient's norm (so the step has the length
        the real step would have had).  Metrics still use the real gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        si_mask: Any,
        *,
        batch_size: int,
        strategy: str = "auto",
        drop_last: bool = False,
        eval_batch_size: int | None = None,
        random_walk: bool = False,
    ):
        self.model = model
        self.si_mask = si_mask
        self.group_names = si_group_names(si_mask)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.drop_last = drop_last
        self.random_walk = random_walk
        self.strategy = choose_strategy(strategy, model)
        # elr and radius are read from the state; the 0.0 here is never used.
        self.tx = sphere_sgd(0.0, si_mask)
        self._train_epoch = jax.jit(self._grid_train_epoch)
        self._evaluate = jax.jit(self._grid_evaluate)
        self._adjacent_cos = jax.jit(jax.vmap(lambda a, b: adjacent_cos(a, b, si_mask)))
        self._recompute_bn: Callable | None = None
        self._sharpness_fns: dict[tuple[int, int, int], Callable] = {}

    # ------------------------------------------------------------------ init

    def init(
        self, elrs: Sequence[float], seeds: Sequence[int], input_shape: tuple[int, ...]
    ) -> GridState:
        """Initial grid state, one member per (elr, seed) pair.

        Member ``i`` gets ELR ``elrs[i]``; its init and batch order come from
        ``seeds[i]`` (``key(seed)`` split into an init key and a data key), so
        members with the same seed share both, as in the paper.

        Args:
          elrs: per-member ELRs, length G.
          seeds: per-member seeds, length G.
          input_shape: input shape without the batch axis.

        Returns:
          The stacked :class:`GridState`.
        """
        if len(elrs) != len(seeds) or not elrs:
            raise UserError("the grid is empty or elrs and seeds differ in length")
        per_seed = {}
        for seed in dict.fromkeys(int(s) for s in seeds):
            init_key, data_key = jax.random.split(jax.random.key(seed))
            v = init_model(self.model, init_key, input_shape)
            per_seed[seed] = (v, jax.random.key_data(data_key))
        members = []
        for elr, seed in zip(elrs, seeds, strict=True):
            v, data_key = per_seed[int(seed)]
            members.append(
                GridState(
                    params=v.params,
                    batch_stats=v.batch_stats,
                    frozen=v.frozen,
                    opt_state=sphere_sgd(float(elr), self.si_mask).init(v.params),
                    step=jnp.zeros((), jnp.int32),
                    data_key=data_key,
                )
            )
        return stack(members)

    # ------------------------------------------------------------------ member functions

    def _apply(self, ms: GridState, params: Any, x: jax.Array, train: bool, mutable: bool):
        variables = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
        if mutable:
            return self.model.apply(variables, x, train=True, mutable=["batch_stats"])
        return self.model.apply(variables, x, train=train, mutable=False)

    def _train_step(self, ms: GridState, x: jax.Array, y: jax.Array):
        def loss_fn(params):
            logits, updated = self._apply(ms, params, x, train=True, mutable=True)
            return _cross_entropy(logits, y).mean(), (updated["batch_stats"], logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ms.params)
        stats = group_stats(
            ms.params, grads, self.si_mask, elr_to_lr(ms.opt_state.elr, ms.opt_state.radius)
        )
        direction = grads
        if self.random_walk:
            key = jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), RANDOM_WALK_SALT)
            direction = tangent_gaussian(
                jax.random.fold_in(key, ms.step), ms.params, grads, self.si_mask
            )
        updates, opt_state = self.tx.update(direction, ms.opt_state, ms.params)
        params = optax.apply_updates(ms.params, updates)
        new = ms.replace(
            params=params,
            batch_stats=batch_stats,
            opt_state=opt_state,
            step=ms.step + 1,
        )
        metrics = {
            "batch_loss": loss,
            "batch_acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "eff_grad_norm": stats.total_eff_grad_norm,
            "step_cos": adjacent_cos(ms.params, params, self.si_mask),
            "group_elr": stats.elr,
            "group_eff_grad_norm": stats.eff_grad_norm,
            "group_ess": stats.ess,
        }
        return new, metrics

    def _member_train_epoch(self, ms: GridState, x: jax.Array, y: jax.Array, epoch: jax.Array):
        n, bs = x.shape[0], self.batch_size
        n_full = n // bs
        key = jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), epoch)
        perm = jax.random.permutation(key, n)

        def body(carry, idx):
            ms, acc = carry
            ms, m = self._train_step(ms, x[idx], y[idx])
            return (ms, jax.tree.map(jnp.add, acc, m)), None

        zeros = jax.eval_shape(lambda: self._train_step(ms, x[:bs], y[:bs])[1])
        acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
        (ms, acc), _ = jax.lax.scan(body, (ms, acc), perm[: n_full * bs].reshape(n_full, bs))
        n_batches = n_full
        if n % bs and not self.drop_last:
            rest = perm[n_full * bs :]
            ms, m = self._train_step(ms, x[rest], y[rest])
            acc = jax.tree.map(jnp.add, acc, m)
            n_batches += 1
        return ms, jax.tree.map(lambda a: a / n_batches, acc)

    def _pass(self, fn: Callable, x: jax.Array, y: jax.Array) -> jax.Array:
        """Mean over examples of ``fn(xb, yb) -> [k]`` per-batch sums, batch by batch in order."""
        n, bs = x.shape[0], min(self.eval_batch_size, x.shape[0])
        n_full = n // bs

        def body(total, i):
            xb = jax.lax.dynamic_slice_in_dim(x, i * bs, bs)
            yb = jax.lax.dynamic_slice_in_dim(y, i * bs, bs)
            return total + fn(xb, yb), None

        init = jnp.zeros(jax.eval_shape(fn, x[:bs], y[:bs]).shape, jnp.float32)
        total, _ = jax.lax.scan(body, init, jnp.arange(n_full))
        if n % bs:
            total = total + fn(x[n_full * bs :], y[n_full * bs :])
        return total / n

    def _member_evaluate(self, ms: GridState, x_tr, y_tr, x_te, y_te) -> dict[str, jax.Array]:
        def sums(train: bool):
            def fn(xb, yb):
                logits = self._apply(ms, ms.params, xb, train=train, mutable=False)
                correct = jnp.sum(jnp.argmax(logits, -1) == yb)
                return jnp.stack([jnp.sum(_cross_entropy(logits, yb)), correct])

            return fn

        train = self._pass(sums(True), x_tr, y_tr)
        test = self._pass(sums(False), x_te, y_te)
        return {
            "train_loss": train[0],
            "train_acc": train[1],
            "test_loss": test[0],
            "test_acc": test[1],
            "si_norm": si_norm(ms.params, self.si_mask),
        }

    # ------------------------------------------------------------------ grid functions

    def _over_members(self, fn: Callable, state: GridState, *shared: jax.Array):
        # A one-member "vmap" only adds batching overhead (~1.3x per MLP step,
        # benchmarks/RESULTS.md): run it as the one-iteration map instead.
        g = jax.tree.leaves(state)[0].shape[0]
        if self.strategy == "vmap" and g > 1:
            return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(state, *shared)
        return jax.lax.map(lambda ms: fn(ms, *shared), state)

    def _grid_train_epoch(self, state, x, y, epoch):
        return self._over_members(self._member_train_epoch, state, x, y, epoch)

    def _grid_evaluate(self, state, x_tr, y_tr, x_te, y_te):
        return self._over_members(self._member_evaluate, state, x_tr, y_tr, x_te, y_te)

    def train_epoch(
        self, state: GridState, x: jax.Array, y: jax.Array, epoch: int
    ) -> tuple[GridState, dict[str, jax.Array]]:
        """Trains every member for one epoch (epoch numbers start at 0).

        Returns:
          The new state and per-member epoch means: ``batch_loss``, ``batch_acc``,
          ``eff_grad_norm`` ``[G]`` and ``group_elr``, ``group_eff_grad_norm``,
          ``group_ess`` ``[G, n_groups]``.
        """
        return self._train_epoch(state, x, y, jnp.asarray(epoch, jnp.uint32))

    def evaluate(self, state: GridState, x_train, y_train, x_test, y_test) -> dict[str, jax.Array]:
        """Evaluates every member on the training set and the test set.

        Returns:
          Per-member ``train_loss``, ``train_acc`` (train-mode BN: batch
          statistics), ``test_loss``, ``test_acc`` (eval-mode BN: running
          statistics) and ``si_norm``, each ``[G]``.
        """
        return self._evaluate(state, x_train, y_train, x_test, y_test)

    def recompute_batch_stats(self, state: GridState, x: jax.Array) -> GridState:
        """Re-estimates every member's BN running statistics from the data ``x``.

        One pass over ``x`` in order, in mini-batches of ``eval_batch_size``:
        the running mean and (unbiased) variance become the equal-weight average
        of the batch statistics, like PyTorch's ``bn_update`` with
        ``momentum=None``.  Parameters are untouched.
        """
        if self._recompute_bn is None:
            exact = self.model.clone(bn_momentum=1.0)  # running stats := batch stats

            def member_fn(ms, x):
                def batch_stats_of(xb, yb):
                    del yb
                    variables = {"params": ms.params, "batch_stats": ms.batch_stats}
                    variables[FROZEN] = ms.frozen
                    _, upd = exact.apply(variables, xb, train=True, mutable=["batch_stats"])
                    return upd["batch_stats"]

                n = x.shape[0]
                bs = min(self.eval_batch_size, n)
                n_full = n // bs

                def body(total, i):
                    xb = jax.lax.dynamic_slice_in_dim(x, i * bs, bs)
                    return jax.tree.map(jnp.add, total, batch_stats_of(xb, None)), None

                zeros = jax.tree.map(jnp.zeros_like, ms.batch_stats)
                total, _ = jax.lax.scan(body, zeros, jnp.arange(n_full))
                count = n_full
                if n % bs:
                    rest = batch_stats_of(x[n_full * bs :], None)
                    total, count = jax.tree.map(jnp.add, total, rest), count + 1
                return ms.replace(batch_stats=jax.tree.map(lambda t: t / count, total))

            self._recompute_bn = jax.jit(lambda state, x: self._over_members(member_fn, state, x))
        return self._recompute_bn(state, x)

    def adjacent_cos(self, params_a: Any, params_b: Any) -> jax.Array:
        """Per-member cosine ``[G]`` between the SI weights of two grid parameter sets."""
        return self._adjacent_cos(params_a, params_b)

    def sharpness(
        self,
        state: GridState,
        x: jax.Array,
        y: jax.Array,
        key: jax.Array,
        *,
        n_probes: int = 8,
        n_iters: int = 20,
        batch_size: int | None = None,
    ) -> dict[str, jax.Array]:
        """Effective sharpness measures of every member on the subset ``(x, y)``.

        See :mod:`three_regimes_jax.metrics`: gradient-covariance trace,
        Hutchinson FIM and Hessian traces, Lanczos top eigenvalues, all on the
        SI parameters at ``theta_SI / rho`` with train-mode BN.  Members run with
        the trainer's strategy; the subset and the key are shared by all.

        Returns:
          Name -> ``[G]`` array (``metrics.SHARPNESS_KEYS``).
        """
        bs = int(batch_size or self.batch_size)
        cache_key = (int(n_probes), int(n_iters), bs)
        if cache_key not in self._sharpness_fns:
            # Forward-mode products (Hessian/Fisher) need convolutions without
            # the reverse-only custom VJP; the numbers are the same.
            model = self.model
            if "fast_vjp" in getattr(model, "__dataclass_fields__", {}):
                model = model.clone(fast_vjp=False)

            def member_fn(ms, x, y, key):
                return sharpness(
                    model.apply,
                    ms.params,
                    ms.batch_stats,
                    ms.frozen,
                    self.si_mask,
                    x,
                    y,
                    batch_size=bs,
                    key=key,
                    n_probes=cache_key[0],
                    n_iters=cache_key[1],
                )

            self._sharpness_fns[cache_key] = jax.jit(
                lambda state, x, y, key: self._over_members(member_fn, state, x, y, key)
            )
        return self._sharpness_fns[cache_key](state, x, y, key)


def finite_members(state: GridState, metrics: dict[str, Any]) -> np.ndarray:
    """Bool ``[G]``: True where every parameter and every metric is finite."""
    ok = np.ones(state.size, bool)
    for leaf in jax.tree.leaves(state.params) + list(metrics.values()):
        a = np.asarray(leaf)
        ok &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return ok
