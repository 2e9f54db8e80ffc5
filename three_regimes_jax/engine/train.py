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

Members run with ``jax.vmap`` or one after another with ``lax.map``, split
over the devices (:func:`~three_regimes_jax.engine.grid.over_members`; the
strategy is resolved by :func:`~three_regimes_jax.engine.grid.choose_strategy`).
:class:`~three_regimes_jax.engine.trainer.GridTrainer` only holds the jitted functions of
one model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from three_regimes_jax.engine.augment import augment_key, random_crop_flip
from three_regimes_jax.engine.batching import scan_batches
from three_regimes_jax.engine.diagnostics import adjacent_cos
from three_regimes_jax.engine.grid import GridState, over_members, stack
from three_regimes_jax.engine.metrics import sharpness
from three_regimes_jax.engine.models import FROZEN, init_model
from three_regimes_jax.engine.optim import SweptOptimizer
from three_regimes_jax.engine.sphere import leaf_sums, si_norm
from three_regimes_jax.engine.stats import filter_stats, group_stats

# Folded into a member's data key to draw the random-walk directions.
RANDOM_WALK_SALT = 0x52574B
# Folded into a member's data key to draw dropout masks (models with ``dropout > 0``).
DROPOUT_SALT = 0x44524F


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def _apply(model: nn.Module, ms: GridState, params: Any, x: jax.Array, *, train: bool):
    variables = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
    return model.apply(variables, x, train=train, mutable=False)


def make_train_step(
    model: nn.Module,
    si_mask: Any,
    opt: SweptOptimizer,
    *,
    filter_groups: bool = False,
    pad_value: Any = None,
) -> Callable:
    """``train_step(member_state, x, y[, step_norm, lr_scale]) -> (member_state, metrics)``.

    One optimizer step (on the sphere or in the whole space, as ``opt``).
    ``step_norm`` (random walk only) is the effective gradient norm
    ``||grad_SI|| * rho`` whose length the random step takes (NaN: the
    gradient's own); ``lr_scale`` is the LR schedule's factor (whole space);
    ``epoch_time`` is the fractional epoch at which a member's ELR schedule
    (``opt.elr_factor``) is read.
    With ``pad_value`` (``[C]``) the batch is augmented first
    (:func:`~three_regimes_jax.engine.augment.random_crop_flip`, keyed by the
    member's data key and step, so members sharing a seed share it).  Models
    with ``dropout > 0`` get a ``"dropout"`` PRNG stream here, and only here.

    Metrics: ``batch_loss``, ``batch_acc``, ``eff_grad_norm_traj``
    (``||grad_SI L_B|| * rho`` at the step's parameters: its epoch mean is the
    effective gradient norm along the trajectory), ``step_cos`` (cosine
    between the SI weights before and after), ``group_elr``,
    ``group_eff_grad_norm``, ``group_ess`` and, with ``filter_groups``, the
    same three per filter (``filter_*``, see ``stats.filter_stats``).
    """
    dropout = getattr(model, "dropout", 0.0) > 0

    def train_step(
        ms: GridState, x: jax.Array, y: jax.Array, step_norm=None, lr_scale=1.0, epoch_time=0.0
    ):
        if opt.elr_factor is not None:  # the member's ELR schedule (--elr-schedules)
            lr_scale = lr_scale * opt.elr_factor(ms.opt_state, epoch_time)
        if pad_value is not None:
            x = random_crop_flip(augment_key(ms.data_key, ms.step), x, pad_value)
        rngs = {}
        if dropout:
            key = jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), DROPOUT_SALT)
            rngs = {"dropout": jax.random.fold_in(key, ms.step)}

        def loss_fn(params):
            variables = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
            logits, updated = model.apply(
                variables, x, train=True, mutable=["batch_stats"], rngs=rngs
            )
            return cross_entropy(logits, y).mean(), (updated.get("batch_stats", {}), logits)

        (loss, (batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ms.params)
        lr = opt.lr(ms.opt_state, lr_scale)
        sums = leaf_sums(ms.params, grads, si_mask)
        stats = group_stats(ms.params, grads, si_mask, lr, sums)
        if opt.apply is not None:
            params, opt_state, step_cos = opt.apply(
                grads, ms.opt_state, ms.params, sums, lr_scale=lr_scale
            )
        else:
            rw_key = jax.random.fold_in(
                jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), RANDOM_WALK_SALT),
                ms.step,
            )
            rw_norm = None if step_norm is None else step_norm / si_norm(ms.params, si_mask)
            updates, opt_state = opt.update(
                grads, ms.opt_state, ms.params, rw_key=rw_key, rw_norm=rw_norm, lr_scale=lr_scale
            )
            params = optax.apply_updates(ms.params, updates)
            step_cos = adjacent_cos(ms.params, params, si_mask)
        new = ms.replace(
            params=params, batch_stats=batch_stats, opt_state=opt_state, step=ms.step + 1
        )
        metrics = {
            "batch_loss": loss,
            "batch_acc": jnp.mean(jnp.argmax(logits, -1) == y),
            "eff_grad_norm_traj": stats.total_eff_grad_norm,
            "step_cos": step_cos,
            "group_elr": stats.elr,
            "group_eff_grad_norm": stats.eff_grad_norm,
            "group_ess": stats.ess,
        }
        if filter_groups:
            fs = filter_stats(ms.params, grads, si_mask, lr)
            metrics |= {"filter_elr": fs.elr, "filter_eff_grad_norm": fs.eff_grad_norm}
            metrics["filter_ess"] = fs.ess
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
    filter_groups: bool = False,
    log_steps: bool = False,
    schedule: Callable[[jax.Array], jax.Array] | None = None,
    pad_value: Any = None,
) -> Callable:
    """``train_epoch(state, x, y, epoch[, step_norm]) -> (state, metrics)`` over a whole grid.

    Epoch numbers start at 0; ``schedule(epoch)`` is the LR factor of the
    epoch (whole space; see :func:`~three_regimes_jax.engine.optim.lr_schedule`);
    ``pad_value`` turns augmentation on (see :func:`make_train_step`).
    ``step_norm`` ``[G]`` is the effective gradient norm each member's
    random-walk steps replicate (NaN or None: their own).
    Metrics are per-member means over the epoch's mini-batches (see
    :func:`make_train_step`), each ``[G]`` or ``[G, n_groups]``.  With
    ``log_steps`` (and ``filter_groups``), ``metrics["steps"]`` also holds the
    per-filter statistics of every step, ``{"filter_elr", ...}: [G, n_batches, n_filters]``.
    """
    step = make_train_step(model, si_mask, opt, filter_groups=filter_groups, pad_value=pad_value)

    def member_epoch(member_in, x: jax.Array, y: jax.Array, epoch: jax.Array):
        ms, step_norm = member_in
        lr_scale = 1.0 if schedule is None else schedule(epoch)
        key = jax.random.fold_in(jax.random.wrap_key_data(ms.data_key), epoch)
        perm = jax.random.permutation(key, x.shape[0])
        bs = min(batch_size, x.shape[0])
        shapes = jax.eval_shape(lambda: step(ms, x[:bs], y[:bs], step_norm, lr_scale)[1])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        # the fractional epoch of each step, for ELR schedules
        per_epoch = x.shape[0] // bs if drop_last else -(-x.shape[0] // bs)
        step0 = ms.step

        def body(carry, xb, yb):
            ms, acc = carry
            t = epoch + (ms.step - step0).astype(jnp.float32) / per_epoch
            ms, m = step(ms, xb, yb, step_norm, lr_scale, t)
            carry = ms, jax.tree.map(jnp.add, acc, m)
            if log_steps:
                return carry, {
                    k: m[k] for k in ("filter_elr", "filter_eff_grad_norm", "filter_ess")
                }
            return carry

        result, n_batches = scan_batches(
            body, (ms, zeros), x, y, batch_size, order=perm, drop_last=drop_last, collect=log_steps
        )
        (ms, acc), per_step = result if log_steps else (result, None)
        means = jax.tree.map(lambda a: a / n_batches, acc)
        if log_steps:
            means["steps"] = per_step
        return ms, means

    grid_epoch = over_members(member_epoch, strategy)

    def train_epoch(state: GridState, x, y, epoch, step_norm=None):
        if step_norm is None:
            step_norm = jnp.full(state.step.shape, jnp.nan, jnp.float32)
        return grid_epoch((state, step_norm), x, y, epoch)

    return train_epoch


def make_evaluate(model: nn.Module, si_mask: Any, *, batch_size: int, strategy: str) -> Callable:
    """``evaluate(state, x_tr, y_tr, x_te, y_te) -> metrics`` over a whole grid.

    Metrics, each ``[G]``, at the state's fixed parameters, in passes over the
    data in order, in mini-batches of ``batch_size``:

    - ``train_loss``, ``train_acc``: train-mode BN (batch statistics, running
      statistics untouched), as the paper's ``get_info.py --train_mode``;
    - ``eff_grad_norm``: in the same pass, the mean over the mini-batches of
      ``||grad_SI L_B(theta)|| * ||theta_SI||`` (App. B; the y-axis of the
      paper's diagrams);
    - ``test_loss``, ``test_acc``: eval-mode BN (running statistics);
    - ``si_norm``.
    """

    def member_evaluate(ms: GridState, x_tr, y_tr, x_te, y_te):
        rho = si_norm(ms.params, si_mask)

        def train_add(total, xb, yb):
            def loss_fn(params):
                logits = _apply(model, ms, params, xb, train=True)
                ce = cross_entropy(logits, yb)
                return ce.mean(), (ce, logits)

            (_, (ce, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(ms.params)
            correct = jnp.sum(jnp.argmax(logits, -1) == yb)
            eff = si_norm(grads, si_mask) * rho
            return total + jnp.stack([jnp.sum(ce), correct, eff])

        def test_add(total, xb, yb):
            logits = _apply(model, ms, ms.params, xb, train=False)
            correct = jnp.sum(jnp.argmax(logits, -1) == yb)
            return total + jnp.stack([jnp.sum(cross_entropy(logits, yb)), correct])

        train, n_batches = scan_batches(
            train_add, jnp.zeros(3, jnp.float32), x_tr, y_tr, batch_size
        )
        test, _ = scan_batches(test_add, jnp.zeros(2, jnp.float32), x_te, y_te, batch_size)
        n_tr, n_te = x_tr.shape[0], x_te.shape[0]
        return {
            "train_loss": train[0] / n_tr,
            "train_acc": train[1] / n_tr,
            "eff_grad_norm": train[2] / n_batches,
            "test_loss": test[0] / n_te,
            "test_acc": test[1] / n_te,
            "si_norm": rho,
        }

    return over_members(member_evaluate, strategy)


def make_recompute_bn(model: nn.Module, *, batch_size: int, strategy: str) -> Callable:
    """``recompute(state, x) -> state`` with every member's BN running statistics re-estimated.

    One pass over ``x`` in order: the running mean and (unbiased) variance
    become the equal-weight average of the batch statistics, like PyTorch's
    ``bn_update`` with ``momentum=None``.  Parameters are untouched.
    """
    if "bn_momentum" not in getattr(model, "__dataclass_fields__", {}):
        return lambda state, x: state  # no BatchNorm (the Transformer): nothing to re-estimate
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


@functools.lru_cache(maxsize=64)
def _compiled_init(model: nn.Module, input_shape: tuple[int, ...]) -> Callable:
    """One jitted init per model and input shape, kept for later grids of the same model.

    Eagerly, every random op of every shape would compile on its own; and a new
    jitted lambda per grid would compile the init again (~2 s for a small MLP).
    """
    return jax.jit(lambda key: init_model(model, key, input_shape)._replace(si_mask=None))


def init_grid(
    model: nn.Module,
    opt: SweptOptimizer,
    elrs: Sequence[float],
    seeds: Sequence[int],
    input_shape: tuple[int, ...],
    *,
    si_mask: Any = None,
    per_seed_head: bool = True,
) -> GridState:
    """Initial grid state, one member per (elr, seed) pair.

    Member ``i`` gets ELR ``elrs[i]`` (or, as a dict, the optimizer's
    hyperparameters, e.g. ``{"lr": 0.1, "weight_decay": 1e-4}`` in the whole
    space); its init and batch order come from ``seeds[i]`` (``key(seed)``
    split into an init key and a data key), so members with the same seed
    share both, as in the paper.  Unless
    ``per_seed_head``, every member's last layer (the frozen collection and
    the non-SI parameters, marked by ``si_mask``) is seed 0's, as the official
    code's ``same_last_layer``: seed 0's members are unchanged by the choice.
    """
    if len(elrs) != len(seeds) or not elrs:
        raise ValueError("the grid is empty or elrs and seeds differ in length")
    init = _compiled_init(model, tuple(input_shape))

    def variables(seed: int):
        init_key, data_key = jax.random.split(jax.random.key(seed))
        return init(init_key), jax.random.key_data(data_key)

    head = None if per_seed_head else variables(0)[0]
    per_seed = {}
    for seed in dict.fromkeys(int(s) for s in seeds):
        v, data_key = variables(seed)
        if head is not None and seed != 0:
            if si_mask is None:
                raise ValueError("a shared head needs the si_mask (non-SI leaves are the head)")
            params = jax.tree.map(lambda m, p, h: p if m else h, si_mask, v.params, head.params)
            v = v._replace(params=params, frozen=head.frozen)
        per_seed[seed] = (v, data_key)
    members = []
    for elr, seed in zip(elrs, seeds, strict=True):
        v, data_key = per_seed[int(seed)]
        hyper = dict(elr) if isinstance(elr, dict) else {"elr": float(elr)}
        params = v.params if opt.prepare is None else opt.prepare(v.params)
        members.append(
            GridState(
                params=params,
                batch_stats=v.batch_stats,
                frozen=v.frozen,
                opt_state=opt.init(params, **hyper),
                step=jnp.zeros((), jnp.int32),
                data_key=data_key,
            )
        )
    return stack(members)
