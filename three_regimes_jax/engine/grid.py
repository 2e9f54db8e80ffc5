"""The grid: G models (ELRs x seeds) as one pytree with a leading axis.

A :class:`GridState` is one pytree whose every leaf has a leading grid axis
``G``; :func:`member` and :func:`stack` move between a grid and its members,
:func:`shard_grid` places the grid axis over devices, and
:func:`choose_strategy` decides how members run: with ``jax.vmap`` (one batched
computation, the fast path for dense models and on GPU/TPU) or one after
another inside the same jit with ``lax.map`` (faster for convolutions on
XLA:CPU, where vmapped convs become grouped convolutions).  Both give the same
numbers up to float reassociation; see ``benchmarks/``.

:func:`over_members` lifts a member function to the grid with the strategy and
splits the grid over all devices (:func:`split_over_devices`: padded to a
multiple of the device count, one block of members per device under
``jax.shard_map``, padding dropped).  The compiled functions over a grid are
in :mod:`three_regimes_jax.engine.train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    if len(devices) < 2 or g % len(devices) or jax.process_count() > 1:
        # Several processes: every process keeps the whole grid (the compiled
        # functions split it, see ``split_over_devices``) so that each can read it.
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


# On XLA:CPU a vmapped MLP-SI step costs 1.33-1.40 ms per member up to G = 8 and
# 1.51 / 1.71 / 1.81 ms at G = 16 / 32 / 64 (benchmarks/RESULTS.md, "vs_torch"):
# larger grids run as a sequential map over vmapped chunks of this many members.
CPU_VMAP_CHUNK = 8


def over_members(fn: Callable, strategy: str) -> Callable:
    """Lifts ``fn(member_state, *shared)`` to a grid: ``vmap`` or ``lax.map`` over axis 0.

    A one-member ``vmap`` only adds batching overhead (~1.3x per MLP step,
    benchmarks/RESULTS.md), so one member always runs as a one-iteration map.
    On CPU a ``vmap`` over more than :data:`CPU_VMAP_CHUNK` members runs as
    ``lax.map(..., batch_size=CPU_VMAP_CHUNK)``: vmapped chunks, one after
    another (the same numbers as one ``vmap``, to float rounding).

    With several devices the grid axis is split over all of them
    (:func:`split_over_devices`): each device runs its own members with the
    strategy, so a sharded ``map`` grid is bit-for-bit the unsharded one.
    """

    def local(state, *shared):
        g = jax.tree.leaves(state)[0].shape[0]
        if strategy == "vmap" and g > 1:
            if g > CPU_VMAP_CHUNK and jax.default_backend() == "cpu":
                member_fn = lambda ms: fn(ms, *shared)  # noqa: E731
                return jax.lax.map(member_fn, state, batch_size=CPU_VMAP_CHUNK)
            return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(state, *shared)
        return jax.lax.map(lambda ms: fn(ms, *shared), state)

    return split_over_devices(local)


def pad_members(tree: Any, size: int) -> Any:
    """``tree`` with its grid axis padded to ``size`` by repeating the last member.

    The padded members are real copies (finite, valid states), so they cost
    compute but never a NaN; callers drop them (:func:`split_over_devices`).
    """

    def pad(x):
        extra = size - x.shape[0]
        return x if extra <= 0 else jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(pad, tree)


def split_over_devices(grid_fn: Callable, devices: Sequence[jax.Device] | None = None) -> Callable:
    """``grid_fn(state, *shared)`` with the grid axis split over ``devices`` (default: all).

    The grid is padded to a multiple of the device count (:func:`pad_members`),
    each device runs ``grid_fn`` on its block of members (``jax.shard_map``;
    ``shared`` is replicated), and the padded members are dropped from every
    output.  Every output must have the grid axis first.  With one device, or
    one member, ``grid_fn`` runs as is.  Members never interact, so the
    result is the unsplit one (bit-for-bit with ``lax.map`` inside).
    """

    def split(state, *shared):
        devs = list(devices) if devices is not None else jax.devices()
        g = jax.tree.leaves(state)[0].shape[0]
        if len(devs) < 2 or g < 2:
            return grid_fn(state, *shared)
        n = len(devs)
        padded = pad_members(state, -(-g // n) * n)
        mesh = jax.sharding.Mesh(np.array(devs), ("grid",))
        spec, rep = jax.sharding.PartitionSpec("grid"), jax.sharding.PartitionSpec()
        out = jax.shard_map(
            grid_fn,
            mesh=mesh,
            in_specs=(spec, *(rep,) * len(shared)),
            out_specs=spec,
            check_vma=False,
        )(padded, *shared)
        out = jax.tree.map(lambda x: x[:g], out)
        if jax.process_count() > 1:
            # Several processes (``--distributed``): every process gets the whole grid's
            # outputs, so each can read them (and process 0 write them).
            replicated = jax.sharding.NamedSharding(mesh, rep)
            out = jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, replicated), out)
        return out

    return split
