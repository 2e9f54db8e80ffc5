"""``GridTrainer``: the jitted grid functions of one model, from ``engine.train``'s factories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from three_regimes_jax.config import Config, TrainConfig
from three_regimes_jax.engine.grid import GridState, choose_strategy
from three_regimes_jax.engine.models import build_model_from_config, si_mask_of, si_sets_of
from three_regimes_jax.engine.optim import lr_schedule, make_optimizer
from three_regimes_jax.engine.sphere import individually_si, si_group_names
from three_regimes_jax.engine.train import (
    init_grid,
    make_adjacent_cos,
    make_evaluate,
    make_recompute_bn,
    make_sharpness,
    make_train_epoch,
)
from three_regimes_jax.errors import UserError


def _with_precision(fn: Callable, precision: str) -> Callable:
    """``fn`` traced under ``jax.default_matmul_precision(precision)``."""

    def wrapped(*args):
        with jax.default_matmul_precision(precision):
            return fn(*args)

    return wrapped


def _chunked(fn: Callable, chunk: int | None, state: GridState, *args, per_member=()):
    """``fn(state, *args)`` in sequential chunks of ``chunk`` members, outputs concatenated.

    ``per_member``: the positions in ``args`` that carry a grid axis too (sliced
    like the state); every output leaf has a leading grid axis.
    """
    g = state.size
    if chunk is None or chunk >= g:
        return fn(state, *args)
    outs = []
    for lo in range(0, g, chunk):
        hi = min(lo + chunk, g)
        part = jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], state)
        part_args = [
            jax.tree.map(lambda a, lo=lo, hi=hi: a[lo:hi], a) if i in per_member else a
            for i, a in enumerate(args)
        ]
        outs.append(fn(part, *part_args))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)


def _step_norm_arg(state: GridState, step_norm) -> jax.Array:
    """``[G]`` float32 random-walk step norms; NaN (each member's own) when None."""
    if step_norm is None:
        return jnp.full(state.step.shape, jnp.nan, jnp.float32)
    return jnp.asarray(step_norm, jnp.float32)


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
      filter_groups: also record per-filter statistics in ``train_epoch``.
      per_seed_head: draw the last layer per seed (default: seed 0's for all).
      precision: ``jax.default_matmul_precision`` of every compiled function.
      train: the training config whose optimizer (sphere or whole space,
        :func:`~three_regimes_jax.engine.optim.make_optimizer`) and LR schedule
        the trainer runs; its ``batch_size``, ``drop_last`` and
        ``random_walk`` replace the arguments of those names (default: a
        sphere config with them).
      pad_value: ``[C]`` padding value of the training-batch augmentation
        (black after normalisation, ``-mean / std``); None: no augmentation.
      si_sets: the joint-SI set of each SI group (``sphere.si_sets``; None:
        every group individually SI); gives :attr:`group_individually_si`.
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
        filter_groups: bool = False,
        per_seed_head: bool = False,
        precision: str = "highest",
        train: TrainConfig | None = None,
        pad_value=None,
        si_sets: list[str | None] | None = None,
    ):
        if train is None:
            train = TrainConfig(
                batch_size=int(batch_size), drop_last=drop_last, random_walk=random_walk
            )
        batch_size, drop_last = train.batch_size, train.drop_last
        self.model = model
        self.si_mask = si_mask
        self.group_names = si_group_names(si_mask)
        sets = [None] * len(self.group_names) if si_sets is None else list(si_sets)
        #: Bool ``[n_groups]``: the groups that are scale-invariant on their own.
        self.group_individually_si = individually_si(sets)
        if train.sphere != "total" and not self.group_individually_si.all():
            joint = self.group_names[int(np.flatnonzero(~self.group_individually_si)[0])]
            raise UserError(
                f"--sphere {train.sphere} needs every SI leaf to be scale-invariant on its own, "
                f"but {joint} is so only jointly with others; use --sphere total"
            )
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.strategy = choose_strategy(strategy, model)
        self.filter_groups = filter_groups
        self.per_seed_head = per_seed_head
        self.precision = precision
        self.train_config = train
        self.optimizer = make_optimizer(train, si_mask)
        self.schedule = lr_schedule(train.schedule, train.epochs) if train.mode == "whole" else None
        self.pad_value = None if pad_value is None else jnp.asarray(pad_value, jnp.float32)
        s = self.strategy
        self.train_epoch_fn = self._jit(
            make_train_epoch(
                model,
                si_mask,
                self.optimizer,
                batch_size=self.batch_size,
                drop_last=drop_last,
                strategy=s,
                filter_groups=filter_groups,
                schedule=self.schedule,
                pad_value=self.pad_value,
            ),
            precision,
        )
        self.evaluate_fn = self._jit(
            make_evaluate(model, si_mask, batch_size=self.eval_batch_size, strategy=s), precision
        )
        self.recompute_batch_stats = self._jit(
            make_recompute_bn(model, batch_size=self.eval_batch_size, strategy=s), precision
        )
        self.adjacent_cos = self._jit(make_adjacent_cos(si_mask), precision)
        self.drop_last = drop_last
        self._epoch_args = dict(
            batch_size=self.batch_size,
            drop_last=drop_last,
            strategy=s,
            schedule=self.schedule,
            pad_value=self.pad_value,
        )
        self._train_epoch_log: Callable | None = None
        #: Members per compiled call (None: the whole grid at once); set by the
        #: memory planner (:mod:`~three_regimes_jax.engine.memory`) for grids
        #: that do not fit.  The results are the same either way.
        self.chunk_size: int | None = None
        self._sharpness: dict[tuple[int, int, int], Callable] = {}

    @staticmethod
    def _jit(fn: Callable, precision: str) -> Callable:
        return jax.jit(_with_precision(fn, precision))

    @classmethod
    def from_config(
        cls,
        config: Config,
        num_classes: int,
        input_shape: tuple[int, ...],
        *,
        pad_value=None,
    ) -> GridTrainer:
        """The trainer of a config's model, optimizer, strategy and measurements.

        ``pad_value``: the augmentation's padding value, needed when
        ``config.train.augment`` (see :func:`~three_regimes_jax.engine.data.augment_pad_value`).
        """
        model = build_model_from_config(config, num_classes)
        if config.train.augment and pad_value is None:
            raise ValueError("config.train.augment needs the padding value (pad_value)")
        return cls(
            model,
            si_mask_of(model, input_shape),
            batch_size=config.train.batch_size,
            strategy=config.run.strategy,
            filter_groups=config.measure.filter_groups,
            per_seed_head=config.model.per_seed_head,
            precision=config.run.precision,
            train=config.train,
            pad_value=pad_value if config.train.augment else None,
            si_sets=si_sets_of(model, input_shape),
        )

    def init(
        self, elrs: Sequence[float], seeds: Sequence[int], input_shape: tuple[int, ...]
    ) -> GridState:
        """Initial grid state (see :func:`init_grid`)."""
        return init_grid(
            self.model,
            self.optimizer,
            elrs,
            seeds,
            input_shape,
            si_mask=self.si_mask,
            per_seed_head=self.per_seed_head,
        )

    def train_epoch(self, state: GridState, x: jax.Array, y: jax.Array, epoch: int, step_norm=None):
        """Trains every member for one epoch (epoch numbers start at 0).

        ``step_norm`` ``[G]``: the random walk's effective step norms (see
        :func:`~three_regimes_jax.engine.train.make_train_epoch`).
        """
        step_norm = _step_norm_arg(state, step_norm)
        epoch = jnp.asarray(epoch, jnp.uint32)
        return _chunked(
            self.train_epoch_fn, self.chunk_size, state, x, y, epoch, step_norm, per_member=(3,)
        )

    def train_epoch_logged(
        self, state: GridState, x: jax.Array, y: jax.Array, epoch: int, step_norm=None
    ):
        """:meth:`train_epoch` that also returns every step's per-filter statistics.

        Compiled on first use; ``metrics["steps"]`` holds ``filter_elr``,
        ``filter_eff_grad_norm``, ``filter_ess`` of shape ``[G, n_batches, n_filters]``.
        """
        if self._train_epoch_log is None:
            self._train_epoch_log = self._jit(
                make_train_epoch(
                    self.model,
                    self.si_mask,
                    self.optimizer,
                    filter_groups=True,
                    log_steps=True,
                    **self._epoch_args,
                ),
                self.precision,
            )
        step_norm = _step_norm_arg(state, step_norm)
        epoch = jnp.asarray(epoch, jnp.uint32)
        return _chunked(
            self._train_epoch_log, self.chunk_size, state, x, y, epoch, step_norm, per_member=(3,)
        )

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
            self._sharpness[settings] = self._jit(
                make_sharpness(
                    self.model,
                    self.si_mask,
                    n_probes=settings[0],
                    n_iters=settings[1],
                    batch_size=settings[2],
                    strategy=self.strategy,
                ),
                self.precision,
            )
        return _chunked(self._sharpness[settings], self.chunk_size, state, x, y, key)

    def evaluate(self, state: GridState, x_tr, y_tr, x_te, y_te) -> dict[str, jax.Array]:
        """Every member's metrics at its parameters (see :func:`make_evaluate`)."""
        return _chunked(self.evaluate_fn, self.chunk_size, state, x_tr, y_tr, x_te, y_te)
