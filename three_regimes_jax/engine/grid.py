"""The grid: G models (ELRs x seeds) as one pytree with a leading axis.

A :class:`GridState` is one pytree whose every leaf has a leading grid axis
``G``; :func:`member` and :func:`stack` move between a grid and its members,
:func:`shard_grid` spreads the grid axis over devices, and
:func:`choose_strategy` decides how members run: with ``jax.vmap`` (one batched
computation, the fast path for dense models and on GPU/TPU) or one after
another inside the same jit with ``lax.map`` (faster for convolutions on
XLA:CPU, where vmapped convs become grouped convolutions).  Both give the same
numbers up to float reassociation; see ``benchmarks/``.  The compiled
functions over a grid are in :mod:`three_regimes_jax.engine.train`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from three_regimes_jax.config import STRATEGIES
from three_regimes_jax.errors import UserError


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
    """Resolves ``"auto"``: ``map`` for models that declare ``uses_conv`` on CPU, else ``vmap``.

    Measured in ``benchmarks/RESULTS.md``: on XLA:CPU a vmapped ConvNetSI step is
    several times slower than running members one after another, while dense
    models vmap well.
    """
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if strategy != "auto":
        return strategy
    backend = backend or jax.default_backend()
    return "map" if backend == "cpu" and getattr(model, "uses_conv", False) else "vmap"


def finite_members(state: GridState, metrics: dict[str, Any]) -> np.ndarray:
    """Bool ``[G]``: True where every parameter and every metric is finite."""
    ok = np.ones(state.size, bool)
    for leaf in jax.tree.leaves(state.params) + list(metrics.values()):
        a = np.asarray(leaf)
        ok &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return ok
