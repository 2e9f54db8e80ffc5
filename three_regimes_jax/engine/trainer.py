"""``GridTrainer``: the jitted grid functions of one model, from ``engine.train``'s factories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from three_regimes_jax.config import Config, TrainConfig
from three_regimes_jax.engine.grid import GridState, choose_strategy
from three_regimes_jax.engine.models import build_model, si_mask_of
from three_regimes_jax.engine.optim import make_optimizer
from three_regimes_jax.engine.sphere import si_group_names
from three_regimes_jax.engine.train import (
    init_grid,
    make_adjacent_cos,
    make_evaluate,
    make_recompute_bn,
    make_sharpness,
    make_train_epoch,
)


def _with_precision(fn: Callable, precision: str) -> Callable:
    """``fn`` traced under ``jax.default_matmul_precision(precision)``."""

    def wrapped(*args):
        with jax.default_matmul_precision(precision):
            return fn(*args)

    return wrapped


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
    ):
        self.model = model
        self.si_mask = si_mask
        self.group_names = si_group_names(si_mask)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.strategy = choose_strategy(strategy, model)
        self.filter_groups = filter_groups
        self.per_seed_head = per_seed_head
        self.precision = precision
        self.optimizer = make_optimizer(
            TrainConfig(batch_size=self.batch_size, drop_last=drop_last, random_walk=random_walk),
            si_mask,
        )
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
            ),
            precision,
        )
        self.evaluate = self._jit(
            make_evaluate(model, si_mask, batch_size=self.eval_batch_size, strategy=s), precision
        )
        self.recompute_batch_stats = self._jit(
            make_recompute_bn(model, batch_size=self.eval_batch_size, strategy=s), precision
        )
        self.adjacent_cos = self._jit(make_adjacent_cos(si_mask), precision)
        self.drop_last = drop_last
        self._epoch_args = dict(batch_size=self.batch_size, drop_last=drop_last, strategy=s)
        self._train_epoch_log: Callable | None = None
        self._sharpness: dict[tuple[int, int, int], Callable] = {}

    @staticmethod
    def _jit(fn: Callable, precision: str) -> Callable:
        return jax.jit(_with_precision(fn, precision))

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
            filter_groups=config.measure.filter_groups,
            per_seed_head=m.per_seed_head,
            precision=config.run.precision,
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
        return self.train_epoch_fn(state, x, y, jnp.asarray(epoch, jnp.uint32), step_norm)

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
        return self._train_epoch_log(state, x, y, jnp.asarray(epoch, jnp.uint32), step_norm)

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
        return self._sharpness[settings](state, x, y, key)
