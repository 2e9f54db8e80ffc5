"""Pure training and measurement functions over a :class:`~three_regimes_jax.engine.grid.GridState`.

Each ``make_*`` factory takes the model, its SI mask and static settings and
returns a pure, jittable function of the grid state and the data, in the style
of the Flax examples:

- :func:`make_train_epoch`: ``train_epoch(state, x, y, epoch) -> (state, metrics)``;
  one permutation of the training set per member (the member's data key folded
  with the epoch; members with the same seed share it), the mini-batch steps
  (:func:`~three_regimes_jax.engine.batching.scan_batches`), per-member means
  over the epoch's batches.
- :func:`make_evaluate`: ``evaluate(state, x_tr, y_tr, x_te, y_te) -> metrics``;
  train loss/accuracy with train-mode BN (batch statistics; the paper's
  ``get_info.py --train_mode``), test loss/accuracy with eval-mode BN.
- :func:`make_recompute_bn`, :func:`make_sharpness`, :func:`make_adjacent_cos`.

Members run with ``jax.vmap`` or one after another with ``lax.map``
(:func:`over_members`; the strategy is resolved by
:func:`~three_regimes_jax.engine.grid.choose_strategy`).
:class:`GridTrainer` only holds the jitted functions of one model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from three_regimes_jax.config import Config, TrainConfig
from three_regimes_jax.engine.batching import scan_batches
from three_regimes_jax.engine.diagnostics import adjacent_cos
from three_regimes_jax.engine.grid import GridState, choose_strategy, stack
from three_regimes_jax.engine.metrics import sharpness
from three_regimes_jax.engine.models import FROZEN, build_model, init_model, si_mask_of
from three_regimes_jax.engine.optim import SweptOptimizer, make_optimizer
from three_regimes_jax.engine.sphere import group_stats, si_group_names, si_norm

# Folded into a member's data key to draw the random-walk directions.
RANDOM_WALK_SALT = 0x52574B


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def over_members(fn: Callable, strategy: str) -> Callable:
    """Lifts ``fn(member_state, *shared)`` to a grid: ``vmap`` or ``lax.map`` over axis 0.

    A one-member ``vmap`` only adds batching overhead (~1.3x per MLP step,
    benchmarks/RESULTS.md), so one member always runs as a one-iteration map.
    """

    def grid_fn(state, *shared):
        g = jax.tree.leaves(state)[0].shape[0]
        if strategy == "vmap" and g > 1:
            return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(state, *shared)
        return jax.lax.map(lambda ms: fn(ms, *shared), state)

    return grid_fn


def _apply(model: nn.Module, ms: GridState, params: Any, x: jax.Array, *, train: bool):
    variables = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
    return model.apply(variables, x, train=train, mutable=False)


def make_train_step(model: nn.Module, si_mask: Any, opt: SweptOptimizer) -> Callable:
    """``train_step(member_state, x, y) -> (member_state, metrics)``: one SGD step on the sphere.

    Metrics: ``batch_loss``, ``batch_acc``, ``eff_grad_norm`` (``||grad_SI|| * rho``
    at the step's parameters), ``step_cos`` (cosine between the SI weights
    before and after) and ``group_elr``, ``group_eff_grad_norm``, ``group_ess``.
    """

    def train_step(ms: GridState, x: jax.Array, y: jax.Array):
        def loss_fn(params):
            variables = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
            logits, updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return cross_entropy(logits, y).mean(), (updated["batch_stats"], logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ms.params)
        stats = group_stats(ms.params, grads, si_mask, opt.lr(ms.opt_state))
        rw_key = jax.random.fold_in(
            jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), RANDOM_WALK_SALT), ms.step
        )
        updates, opt_state = opt.update(grads, ms.opt_state, ms.params, rw_key=rw_key)
        params = optax.apply_updates(ms.params, updates)
        new = ms.replace(
            params=params, batch_stats=batch_stats, opt_state=opt_state, step=ms.step + 1
        )
        metrics = {
            "batch_loss": loss,
            "batch_acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "eff_grad_norm": stats.total_eff_grad_norm,
            "step_cos": adjacent_cos(ms.params, params, si_mask),
            "group_elr": stats.elr,
            "group_eff_grad_norm": stats.eff_grad_norm,
            "group_ess": stats.ess,
        }
        return new, metrics

    return train_step


def make_train_epoch(
    model: nn.Module,
    si_mask: Any,
    opt: SweptOptimizer,
    *,
    batch_size: int,
    drop_last: bool = False,
    strategy: str = "vmap",
) -> Callable:
    """``train_epoch(state, x, y, epoch) -> (state, metrics)`` over a whole grid.

    Epoch numbers start at 0.  Metrics are per-member means over the epoch's
    mini-batches (see :func:`make_train_step`), each ``[G]`` or ``[G, n_groups]``.
    """
    step = make_train_step(model, si_mask, opt)

    def member_epoch(ms: GridState, x: jax.Array, y: jax.Array, epoch: jax.Array):
        key = jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), epoch)
        perm = jax.random.permutation(key, x.shape[0])
        bs = min(batch_size, x.shape[0])
        shapes = jax.eval_shape(lambda: step(ms, x[:bs], y[:bs])[1])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def body(carry, xb, yb):
            ms, acc = carry
            ms, m = step(ms, xb, yb)
            return ms, jax.tree.map(jnp.add, acc, m)

        (ms, acc), n_batches = scan_batches(
            body, (ms, zeros), x, y, batch_size, order=perm, drop_last=drop_last
        )
        return ms, jax.tree.map(lambda a: a / n_batches, acc)

    return over_members(member_epoch, strategy)


def make_evaluate(model: nn.Module, si_mask: Any, *, batch_size: int, strategy: str) -> Callable:
    """``evaluate(state, x_tr, y_tr, x_te, y_te) -> metrics`` over a whole grid.

    Metrics, each ``[G]``: ``train_loss``, ``train_acc`` (train-mode BN: batch
    statistics, running statistics untouched), ``test_loss``, ``test_acc``
    (eval-mode BN: running statistics) and ``si_norm``; passes in order, in
    mini-batches of ``batch_size`` (train-mode BN statistics depend on it).
    """

    def member_evaluate(ms: GridState, x_tr, y_tr, x_te, y_te):
        def totals(x, y, train: bool) -> jax.Array:
            def add(total, xb, yb):
                logits = _apply(model, ms, ms.params, xb, train=train)
                correct = jnp.sum(jnp.argmax(logits, -1) == yb)
                return total + jnp.stack([jnp.sum(cross_entropy(logits, yb)), correct])

            total, _ = scan_batches(add, jnp.zeros(2, jnp.float32), x, y, batch_size)
            return total / x.shape[0]

        train, test = totals(x_tr, y_tr, True), totals(x_te, y_te, False)
        return {
            "train_loss": train[0],
            "train_acc": train[1],
            "test_loss": test[0],
            "test_acc": test[1],
            "si_norm": si_norm(ms.params, si_mask),
        }

    return over_members(member_evaluate, strategy)


def make_recompute_bn(model: nn.Module, *, batch_size: int, strategy: str) -> Callable:
    """``recompute(state, x) -> state`` with every member's BN running statistics re-estimated.

    One pass over ``x`` in order: the running mean and (unbiased) variance
    become the equal-weight average of the batch statistics, like PyTorch's
    ``bn_update`` with ``momentum=None``.  Parameters are untouched.
    """
    exact = model.clone(bn_momentum=1.0)  # running stats := batch stats

    def member_fn(ms: GridState, x: jax.Array) -> GridState:
        def add(total, xb, yb):
            del yb
            variables = {"params": ms.params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
            _, upd = exact.apply(variables, xb, train=True, mutable=["batch_stats"])
            return jax.tree.map(jnp.add, total, upd["batch_stats"])

        zeros = jax.tree.map(jnp.zeros_like, ms.batch_stats)
        total, count = scan_batches(add, zeros, x, x, batch_size)
        return ms.replace(batch_stats=jax.tree.map(lambda t: t / count, total))

    return over_members(member_fn, strategy)


def make_sharpness(
    model: nn.Module, si_mask: Any, *, batch_size: int, n_probes: int, n_iters: int, strategy: str
) -> Callable:
    """``sharpness(state, x, y, key) -> {name: [G]}``: the effective sharpness measures.

    See :mod:`three_regimes_jax.engine.metrics`; the subset and the key are
    shared by all members.
    """
    if "fast_vjp" in getattr(model, "__dataclass_fields__", {}):
        # Forward-mode products (Hessian/Fisher) need convolutions without the
        # reverse-only custom VJP; the numbers are the same.
        model = model.clone(fast_vjp=False)

    def member_fn(ms: GridState, x, y, key):
        return sharpness(
            model.apply,
            ms.params,
            ms.batch_stats,
            ms.frozen,
            si_mask,
            x,
            y,
            batch_size=batch_size,
            key=key,
            n_probes=n_probes,
            n_iters=n_iters,
        )

    return over_members(member_fn, strategy)


def make_adjacent_cos(si_mask: Any) -> Callable:
    """``cos(params_a, params_b) -> [G]``: cosine between members' SI weights."""
    return jax.vmap(lambda a, b: adjacent_cos(a, b, si_mask))


def init_grid(
    model: nn.Module,
    opt: SweptOptimizer,
    elrs: Sequence[float],
    seeds: Sequence[int],
    input_shape: tuple[int, ...],
) -> GridState:
    """Initial grid state, one member per (elr, seed) pair.

    Member ``i`` gets ELR ``elrs[i]``; its init and batch order come from
    ``seeds[i]`` (``key(seed)`` split into an init key and a data key), so
    members with the same seed share both, as in the paper.
    """
    if len(elrs) != len(seeds) or not elrs:
        raise ValueError("the grid is empty or elrs and seeds differ in length")
    # One compiled init (eagerly, every random op of every shape compiles on its own).
    init = jax.jit(lambda key: init_model(model, key, input_shape)._replace(si_mask=None))
    per_seed = {}
    for seed in dict.fromkeys(int(s) for s in seeds):
        init_key, data_key = jax.random.split(jax.random.key(seed))
        per_seed[seed] = (init(init_key), jax.random.key_data(data_key))
    members = []
    for elr, seed in zip(elrs, seeds, strict=True):
        v, data_key = per_seed[int(seed)]
        members.append(
            GridState(
                params=v.params,
                batch_stats=v.batch_stats,
                frozen=v.frozen,
                opt_state=opt.init(v.params, elr=float(elr)),
                step=jnp.zeros((), jnp.int32),
                data_key=data_key,
            )
        )
    return stack(members)


class GridTrainer:
    """The jitted grid functions of one model (built by the ``make_*`` factories).

    Args:
      model: a Flax module called as ``model.apply(vars, x, train=...)``.
      si_mask: boolean pytree marking the SI parameters.
      batch_size: mini-batch size.
      strategy: ``"vmap"``, ``"map"`` or ``"auto"`` (see ``grid.choose_strategy``).
      drop_last: drop the last partial batch of each epoch.
      eval_batch_size: batch size of the evaluation passes (default ``batch_size``).
      random_walk: the random-walk baseline of App. M (see ``optim.random_walk``).
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
        self.strategy = choose_strategy(strategy, model)
        self.optimizer = make_optimizer(
            TrainConfig(batch_size=self.batch_size, drop_last=drop_last, random_walk=random_walk),
            si_mask,
        )
        s = self.strategy
        self.train_epoch_fn = jax.jit(
            make_train_epoch(
                model,
                si_mask,
                self.optimizer,
                batch_size=self.batch_size,
                drop_last=drop_last,
                strategy=s,
            )
        )
        self.evaluate = jax.jit(
            make_evaluate(model, si_mask, batch_size=self.eval_batch_size, strategy=s)
        )
        self.recompute_batch_stats = jax.jit(
            make_recompute_bn(model, batch_size=self.eval_batch_size, strategy=s)
        )
        self.adjacent_cos = jax.jit(make_adjacent_cos(si_mask))
        self._sharpness: dict[tuple[int, int, int], Callable] = {}

    @classmethod
    def from_config(
        cls, config: Config, num_classes: int, input_shape: tuple[int, ...]
    ) -> GridTrainer:
        """The trainer of a config's model, batch size, strategy and random walk."""
        m = config.model
        model = build_model(
            m.name,
            num_classes,
            width=m.width,
            depth=m.depth,
            hidden=m.hidden,
            init_scale=m.init_scale,
            train_last_layer=m.train_last_layer,
        )
        return cls(
            model,
            si_mask_of(model, input_shape),
            batch_size=config.train.batch_size,
            strategy=config.run.strategy,
            drop_last=config.train.drop_last,
            random_walk=config.train.random_walk,
        )

    def init(
        self, elrs: Sequence[float], seeds: Sequence[int], input_shape: tuple[int, ...]
    ) -> GridState:
        """Initial grid state (see :func:`init_grid`)."""
        return init_grid(self.model, self.optimizer, elrs, seeds, input_shape)

    def train_epoch(self, state: GridState, x: jax.Array, y: jax.Array, epoch: int):
        """Trains every member for one epoch (epoch numbers start at 0)."""
        return self.train_epoch_fn(state, x, y, jnp.asarray(epoch, jnp.uint32))

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

        See :func:`make_sharpness`; returns name -> ``[G]``.
        """
        settings = (int(n_probes), int(n_iters), int(batch_size or self.batch_size))
        if settings not in self._sharpness:
            self._sharpness[settings] = jax.jit(
                make_sharpness(
                    self.model,
                    self.si_mask,
                    n_probes=settings[0],
                    n_iters=settings[1],
                    batch_size=settings[2],
                    strategy=self.strategy,
                )
            )
        return self._sharpness[settings](state, x, y, key)
