"""Joining the shards of a grid (``sweep --shard K/N``) into the unsharded run's results.

A grid is embarrassingly parallel: ``three-regimes sweep ... --shard K/N`` trains
the contiguous block of members ``K*G//N .. (K+1)*G//N - 1`` (grid order) into its
own results directory, on any machine or scheduler.  :func:`merge_shards` checks
that the N directories belong together (one config but for ``run.shard``; each
shard once; complete, verified results) and writes one directory with:

- ``config.json``: the config with ``run.shard`` cleared, i.e. the unsharded run's;
- ``metrics.npz``: per-member arrays concatenated in shard order, shared arrays
  (epochs, group names, ...) checked equal and kept once, so with the ``map``
  strategy it is bit-for-bit the unsharded run's (``tests/test_shards.py``);
- ``summary.json``: the members in grid order; ``wall_time_s`` is the shards' sum
  and ``shards`` lists each shard's directory, wall time and memory plan;
- ``checkpoints/<epoch>`` for every epoch all shards checkpointed: the shards'
  states concatenated along the grid axis, so fine-tuning and interpolation read a
  merged run as any other.  The resume history (``history.npz``) is not merged: a
  merged run is finished.

:func:`merged_results` does the same in memory (no checkpoints), for commands that
take a list of shard directories directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from three_regimes_jax.storage.checkpoint import GridCheckpointer
from three_regimes_jax.storage.checkpoint_read import META_KEYS
from three_regimes_jax.storage.outdir import claim
from three_regimes_jax.storage.results import Results, config_diff, write_results
from three_regimes_jax.storage.shards import merge_loaded, merged_results, shards_of
from three_regimes_jax.storage.sources import Source


def _merge_checkpoints(dirs: list[Path], out: Path, config: dict[str, Any]) -> list[int]:
    """Concatenated shard states for every epoch all shards hold; returns those epochs."""
    from three_regimes_jax.studies.run import state_template

    source = Source(dirs, flag="merge")  # joins each checkpoint in memory
    epochs = source.epochs()
    if not epochs:
        return []
    meta = source.meta(epochs[0])
    ckpt = GridCheckpointer(
        out,
        config=config,
        num_classes=meta["num_classes"],
        input_shape=meta["input_shape"],
        seeds=meta["seed"],
    )
    with ckpt:
        for epoch in epochs:
            merged, meta = source.load(epoch, state_template)
            extra = {k: v for k, v in meta.items() if k not in _META_OWN}
            ckpt.save(epoch, merged, extra, overwrite=True)
    return epochs


# Meta keys the checkpointer writes itself (the rest is the run's extra meta).
_META_OWN = {*META_KEYS, "lr", "weight_decay"}


def merge_shards(
    dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> Results:
    """Writes the unsharded run's results directory ``out`` from its N shard directories.

    Args:
      dirs: the shards' results directories, in any order.
      out: the merged results directory (refused if it holds another run,
        unless ``overwrite``).
      overwrite: allow ``out`` to hold another run.

    Returns:
      The merged :class:`~three_regimes_jax.storage.results.Results`.

    Raises:
      UserError: the directories are not the N shards of one run (another
        config, a shard missing or given twice, unreadable or damaged results).
    """
    shards = shards_of(dirs)
    res = merge_loaded(shards)
    reads = [d for *_, d in shards]
    with claim(
        out,
        command="merge",
        config=res.config,
        overwrite=overwrite,
        reads=reads,
        differ=config_diff,
    ):
        epochs = _merge_checkpoints([Path(d) for d in reads], Path(out), res.config)
        if epochs:
            res.summary["checkpoint_epochs"] = epochs
        write_results(out, res.config, res.metrics, res.summary)
    return res


__all__ = ["merge_shards", "merged_results"]  # merged_results: re-exported
