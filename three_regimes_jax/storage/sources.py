"""Checkpointed runs to read from: one results directory, or the shards of one run.

``finetune --from`` and ``interpolate --a/--b`` read a run's checkpoints.  A
source is written ``DIR`` or ``DIR1,DIR2,...``: the N shard directories of one
sharded sweep (``sweep --shard K/N``), in any order, which :class:`Source` joins
in memory as ``three-regimes merge`` would on disk: the members in grid order,
each checkpoint's states concatenated along the grid axis and its per-member
meta (``elr``, ``seed``, ``step``, ...) joined, with ``run.shard`` cleared from
the config, so the result is the unsharded run's checkpoint.

The shards must be complete (their results written) and belong together
(:func:`~three_regimes_jax.storage.shards.shards_of`); an epoch is available
when every shard holds it.  A single shard directory is refused with one line
naming both ways on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import (
    available_epochs,
    complete_epochs,
    load_checkpoint,
    read_meta,
)
from three_regimes_jax.storage.shards import shards_of

#: Separates the shard directories of one source (``--from s0,s1``).
SEP = ","


class Source:
    """A run whose checkpoints are read: one directory, or the shards of one run.

    Args:
      spec: ``DIR`` or ``DIR1,DIR2,...`` (the shard directories of one run),
        or a list of directories.
      flag: the flag that named it, for messages (e.g. ``--from``).

    Raises:
      UserError: shards of different runs, a shard missing or given twice, or
        a single shard directory.
    """

    def __init__(self, spec: str | os.PathLike | Sequence[str | os.PathLike], flag: str = "--from"):
        if isinstance(spec, str | os.PathLike):
            parts = [p for p in str(spec).split(SEP) if p] if SEP in str(spec) else [str(spec)]
        else:
            parts = [str(p) for p in spec]
        self.spec = SEP.join(parts)
        self.dirs = [Path(p) for p in parts]
        self.flag = flag
        if len(self.dirs) > 1:
            self.dirs = [Path(d) for *_, d in shards_of(self.dirs)]  # checked, in shard order
        elif _is_shard(self.dirs[0]):
            raise UserError(
                f"{flag} {self.dirs[0]} is one shard of a sharded sweep; name all its shards "
                f"({flag} DIR1,DIR2,...) or merge them first (three-regimes merge)"
            )

    @property
    def sharded(self) -> bool:
        """Whether this source joins several shard directories."""
        return len(self.dirs) > 1

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint (in every shard, complete ones only)."""
        if not self.sharded:
            return available_epochs(self.dirs[0])
        return sorted(set.intersection(*(set(complete_epochs(d)) for d in self.dirs)))

    def latest(self) -> int | None:
        """The latest checkpointed epoch, or None."""
        epochs = self.epochs()
        return epochs[-1] if epochs else None

    def meta(self, epoch: int | None = None) -> dict[str, Any]:
        """The checkpoint's JSON meta (``epoch`` None: the latest), shards joined."""
        if not self.sharded:
            return read_meta(self.dirs[0], epoch)
        epoch = self._epoch(epoch)
        return join_metas([read_meta(d, epoch) for d in self.dirs])

    def load(self, epoch: int | None, template_of: Callable[[dict], Any]) -> tuple[Any, dict]:
        """``(state, meta)`` of the checkpoint at ``epoch`` (None: the latest).

        Args:
          epoch: the epoch.
          template_of: the state template of a checkpoint's meta (e.g.
            :func:`three_regimes_jax.studies.run.state_template`), applied to each
            directory's own meta.
        """
        if not self.sharded:
            meta = read_meta(self.dirs[0], epoch)
            state, meta = load_checkpoint(self.dirs[0], meta["epoch"], template=template_of(meta))
            return state, meta
        epoch = self._epoch(epoch)
        metas, states = [], []
        for d in self.dirs:
            meta = read_meta(d, epoch)
            state, _ = load_checkpoint(d, epoch, template=template_of(meta))
            metas.append(meta)
            states.append(jax.device_get(state))
        merged = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *states)
        return merged, join_metas(metas)

    def _epoch(self, epoch: int | None) -> int:
        epochs = self.epochs()
        if not epochs:
            raise UserError(f"{self.flag} {self.spec}: its shards share no checkpoint epoch")
        if epoch is None:
            return epochs[-1]
        if epoch not in epochs:
            listed = ", ".join(map(str, epochs))
            raise UserError(
                f"{self.flag} {self.spec}: not every shard has epoch {epoch}; they share: {listed}"
            )
        return int(epoch)

    def __str__(self) -> str:
        return self.spec


def join_metas(metas: list[dict[str, Any]]) -> dict[str, Any]:
    """The unsharded run's checkpoint meta from its shards' metas (in shard order).

    Lists with one entry per member are concatenated; everything else is the
    first shard's, and ``run.shard`` is cleared from the config.
    """
    joined = dict(metas[0])
    for key in metas[0]:
        per_member = [isinstance(m.get(key), list) and len(m[key]) == m["members"] for m in metas]
        if key != "input_shape" and all(per_member):
            joined[key] = [v for m in metas for v in m[key]]
    joined["members"] = sum(int(m["members"]) for m in metas)
    joined["config"] = Config.from_dict(metas[0]["config"]).replace(shard="").to_dict()
    return joined


def _is_shard(directory: Path) -> bool:
    """Whether ``directory`` holds a shard's checkpoints (its config has ``run.shard``)."""
    try:
        epochs = available_epochs(directory)
        if not epochs:
            return False
        run = read_meta(directory, epochs[0])["config"].get("run", {})
    except UserError:
        return False  # the caller's own read reports it
    return isinstance(run, dict) and bool(run.get("shard"))


__all__ = ["SEP", "Source", "join_metas"]
