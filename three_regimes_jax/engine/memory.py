"""The memory planner: bytes per grid member, the device's limit, and member chunks.

A grid whose members do not fit in the device's memory at once is trained in
sequential chunks of members (``GridTrainer.chunk_size``): each chunk is one
compiled call, and the results are the same as one call over the whole grid
(members never interact).  The plan is made before anything is compiled, from
an estimate of the bytes one member needs:

- its state: parameters, optimizer state (momentum buffers, ...), BatchNorm
  statistics and frozen layers, counted leaf by leaf;
- its gradients and updates (twice the parameters);
- its activations at the batch size, from the shapes of every module's output
  (``capture_intermediates`` under ``jax.eval_shape``: nothing runs), taken
  three times: the forward values kept for the backward pass, their
  gradients, and the metric passes;

plus what every member shares: the dataset on the device.  The estimate is
deliberately rough (XLA fuses and frees buffers); the plan uses a fraction
(:data:`USABLE_FRACTION`) of the limit to leave room for it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from three_regimes_jax.errors import UserError

#: Fraction of the memory limit the plan fills (the rest is for XLA's own buffers).
USABLE_FRACTION = 0.8
#: Activations are held about this many times per member (forward, backward, metric passes).
ACTIVATION_COPIES = 3
MB = 2**20


def _mb(n: float) -> str:
    return f"{n / MB:.3g} MB"


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ``ShapeDtypeStruct``) leaf of ``tree``."""
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def activation_bytes(model: Any, member: Any, input_shape: tuple[int, ...], batch: int) -> int:
    """Bytes of every module's output for one mini-batch of ``batch`` examples (no compute).

    Args:
      model: a Flax module called as ``apply(variables, x, train=True)``.
      member: one member's state (a ``GridState`` without the grid axis, or its shapes).
      input_shape: one example's shape.
      batch: the batch size.
    """
    from three_regimes_jax.engine.models import FROZEN

    variables = {"params": member.params, "batch_stats": member.batch_stats, FROZEN: member.frozen}
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)

    def run(v, x):
        _, state = model.apply(
            v, x, train=True, capture_intermediates=True, mutable=["intermediates", "batch_stats"]
        )
        return state["intermediates"]

    return tree_bytes(jax.eval_shape(run, variables, x))


def member_bytes(model: Any, member: Any, input_shape: tuple[int, ...], batch: int) -> dict:
    """The estimated bytes one member needs, by part (see the module docstring)."""
    params = tree_bytes(member.params)
    parts = {
        "state": tree_bytes((member.params, member.opt_state, member.batch_stats, member.frozen)),
        "gradients": 2 * params,
        "activations": ACTIVATION_COPIES * activation_bytes(model, member, input_shape, batch),
    }
    parts["total"] = sum(parts.values())
    return parts


def device_limit_bytes(device: Any = None) -> int | None:
    """The memory the device may use: an accelerator's ``bytes_limit``, the host's available RAM.

    None when unknown (no planning then).
    """
    device = device or jax.devices()[0]
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How a grid runs within a memory limit.

    Attributes:
      members: G.
      chunk_size: members per compiled call (G: all at once).
      per_member_bytes: the estimate for one member (:func:`member_bytes`).
      shared_bytes: what all members share (the dataset on the device).
      limit_bytes: the limit planned against, per device (None: unknown, no planning).
      devices: the devices the grid is split over (each holds the data and
        ``chunk_size / devices`` members of a chunk).
    """

    members: int
    chunk_size: int
    per_member_bytes: int
    shared_bytes: int
    limit_bytes: int | None
    devices: int = 1

    @property
    def chunks(self) -> int:
        """Number of sequential chunks."""
        return -(-self.members // self.chunk_size)

    def line(self) -> str:
        """One line saying how the grid runs (for the log)."""
        need = _mb(self.members * self.per_member_bytes + self.shared_bytes)
        limit = "an unknown limit" if self.limit_bytes is None else _mb(self.limit_bytes)
        if self.chunks == 1:
            return f"memory: the grid of {self.members} members needs ~{need} of {limit}"
        each = "member" if self.chunk_size == 1 else "members"
        over = f" per device ({self.devices} devices)" if self.devices > 1 else ""
        return (
            f"memory: the grid of {self.members} members needs ~{need}, more than "
            f"{USABLE_FRACTION:.0%} of {limit}{over}: training it as {self.chunks} sequential "
            f"chunks of {self.chunk_size} {each} (the same results)"
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``summary.json`` form (MB)."""
        return {
            "per_member_mb_estimated": round(self.per_member_bytes / MB, 3),
            "shared_mb": round(self.shared_bytes / MB, 3),
            "limit_mb": None if self.limit_bytes is None else round(self.limit_bytes / MB, 1),
            "chunk_size": self.chunk_size,
            "chunks": self.chunks,
            "devices": self.devices,
        }


def plan_chunks(
    members: int,
    per_member: int,
    shared: int,
    limit: int | None,
    *,
    flag: str = "--memory-limit-mb",
    devices: int = 1,
) -> MemoryPlan:
    """The largest chunk of members that fits in ``USABLE_FRACTION`` of ``limit``.

    With several devices the grid is split over them and every device holds the
    shared data: a chunk is as many members as fit on one device, times ``devices``.

    Raises:
      UserError: not even one member fits (one line, naming the sizes and ``flag``).
    """
    if limit is None:
        return MemoryPlan(members, members, per_member, shared, None, devices)
    usable = USABLE_FRACTION * limit - shared
    if usable < per_member:
        raise UserError(
            f"one member needs ~{_mb(per_member)} (plus {_mb(shared)} of data) but only "
            f"{USABLE_FRACTION:.0%} of {_mb(limit)} may be used; give more memory ({flag}) "
            "or use a smaller --batch-size or model"
        )
    chunk = int(max(1, min(members, devices * (usable // max(per_member, 1)))))
    return MemoryPlan(members, chunk, per_member, shared, limit, devices)


__all__ = [
    "ACTIVATION_COPIES",
    "USABLE_FRACTION",
    "MemoryPlan",
    "activation_bytes",
    "device_limit_bytes",
    "member_bytes",
    "plan_chunks",
    "tree_bytes",
]
