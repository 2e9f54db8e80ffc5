"""Fine-tuning grids of grids: (pre-trained members) x (new ELRs) in one grid.

``three-regimes finetune --from DIR --epoch E --elrs 1e-5,1e-4 --epochs N --out DIR2``
takes the members of the run in ``DIR`` at its checkpoint ``E`` (optionally
only those with the ELRs in ``--members``) and trains each of them at each new
ELR, all in one grid (paper Fig. 3 right, 5, 17, 18, 23).

A fine-tune's config is its source's config plus overrides
(:func:`finetune_config`): the new ELRs, epochs, sharpness and checkpoint
settings, and a ``finetune`` section naming the source, its epoch, the chosen
members and the batch order.  So the model, data and batch size are the
source's by construction, and a fine-tune's checkpoints rebuild their model
from their own config.

- The sphere radius of the source run is kept: ``lr = elr * rho**2`` with the
  source's ``rho``.
- Epoch numbers continue from ``E``: the fine-tune's first epoch is ``E + 1``.
- Batch order (``data_key``): ``"continue"`` (default) keeps each source
  member's data key, so epoch ``E + k`` sees the same batches it would have
  seen in the source run; fine-tuning at the source's own ELR then reproduces
  the source run exactly.  ``"new"`` folds a fixed salt into the key: a
  different, still reproducible, order.
- Baselines (``--from-init``) start from the source's epoch-0 weights; this is
  ``--epoch 0``.
- With an ``out``, the fine-tune's first and last epochs (and every
  ``checkpoint.every`` epochs from ``E``) are checkpointed in ``DIR2/checkpoints``;
  their meta adds each member's ``source_elr``.

The results directory has the sweep format (``config.json`` with ``"kind":
"finetune"``) plus ``source_elr``, ``source_epoch`` and ``source_member`` per
member in ``metrics.npz``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import CheckpointConfig, Config, MeasureConfig
from three_regimes_jax.engine.grid import GridState, member, stack
from three_regimes_jax.engine.optim import with_elr
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results
from three_regimes_jax.storage.sources import Source
from three_regimes_jax.studies.output import check_out, claim_run
from three_regimes_jax.studies.run import (
    load_data,
    make_trainer,
    run_grid,
    state_template,
)

# Folded into the data keys of members fine-tuned with data_key="new".
NEW_ORDER_SALT = 0x46544E


def finetune_config(source: str | Path, *, epoch: int | None = None, **overrides: Any) -> Config:
    """The config of a fine-tune: the source run's config plus the fine-tune's overrides.

    The model, data, batch size, seeds and sharpness settings are the source's;
    the checkpoint schedule and ``sharpness_every`` start from their defaults
    (a fine-tune always checkpoints its first and last epoch); ``overrides``
    (flat names, e.g. ``elrs``, ``epochs``, ``members``, ``data_key``,
    ``sharpness_every``, ``checkpoint_every``) are applied last.

    Args:
      source: results directory of the source run (with checkpoints), or the
        shard directories of one sharded run, comma-separated
        (:class:`~three_regimes_jax.storage.sources.Source`).
      epoch: source checkpoint to start from (default: the latest; 0: the init).
      **overrides: flat config fields.

    Raises:
      UserError: no checkpoints, a missing epoch, or a bad value.
    """
    src = Source(source)
    if not src.epochs():
        raise UserError(
            f"--from {src} has no checkpoints; run the sweep with --checkpoint-epochs, "
            "--checkpoint-every or --checkpoint-log"
        )
    if epoch is None:
        epoch = src.latest()
    meta = src.meta(epoch)
    base = Config.from_dict(meta["config"])
    if base.whole:
        raise UserError(
            f"--from {src} trained in the whole parameter space (--train whole); "
            "fine-tuning continues runs on the sphere only"
        )
    fresh = dataclasses.replace(
        base,
        measure=dataclasses.replace(base.measure, sharpness_every=MeasureConfig().sharpness_every),
        checkpoint=CheckpointConfig(),
        finetune=None,
    )
    return fresh.replace(source=str(source), epoch=epoch, **overrides)


def _select(source_elrs: list[float], wanted: tuple[float, ...], where: str) -> list[int]:
    """Indices of the source members whose ELR is in ``wanted`` (all if empty)."""
    if not wanted:
        return list(range(len(source_elrs)))
    chosen = []
    for w in wanted:
        hits = [i for i, e in enumerate(source_elrs) if math.isclose(e, w, rel_tol=1e-6)]
        if not hits:
            have = ", ".join(f"{e:g}" for e in dict.fromkeys(source_elrs))
            raise UserError(f"no member with ELR {w:g} in {where}; it has: {have}")
        chosen += hits
    return chosen


def build_finetune_grid(
    source_state: GridState, picks: list[int], elrs: Sequence[float], data_key: str
) -> GridState:
    """The grid (picked source members) x (new ELRs), source-member-major.

    Each member keeps its source's parameters, BN statistics, frozen layer,
    radius, step count and (with ``data_key="continue"``) data key; only the
    ELR in the optimizer state changes.
    """
    members = []
    for i in picks:
        src = member(source_state, i)
        key = src.data_key
        if data_key == "new":
            key = jax.random.key_data(
                jax.random.fold_in(jax.random.wrap_key_data(key), NEW_ORDER_SALT)
            )
        for elr in elrs:
            members.append(src.replace(opt_state=with_elr(src.opt_state, elr), data_key=key))
    return stack(members)


def run_finetune(
    config: Config,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """Fine-tunes the chosen pre-trained members at every new ELR in one grid.

    Args:
      config: the fine-tune (see :func:`finetune_config`).
      out: results directory (checked before training, written at the end).
      overwrite: allow ``out`` to hold a different run.
      progress: tqdm bar over epochs.

    Returns:
      :class:`Results` (``metrics`` as in ``metrics.npz``, with ``source_*``).

    Raises:
      UserError: missing source/checkpoint or unusable ``out``.
    """
    ft = config.finetune
    if ft is None:
        raise UserError("run_finetune needs a fine-tune Config (see finetune_config)")
    check_out(config, out, overwrite=overwrite, resume=False)
    with claim_run(config, out, overwrite=overwrite, resume=False):
        return _finetune(config, Source(ft.source), out, overwrite, progress)


def _finetune(config: Config, src: Source, out, overwrite: bool, progress: bool) -> Results:
    ft = config.finetune
    if not src.epochs():
        raise UserError(f"--from {src} has no checkpoints; pass a checkpointed run")
    meta = src.meta(ft.epoch)
    picks = _select([float(e) for e in meta["elr"]], ft.members, f"{src}")
    ds = load_data(config)
    trainer = make_trainer(config, ds.num_classes, ds.image_shape)
    src_state, _ = src.load(ft.epoch, state_template)
    state = build_finetune_grid(src_state, picks, config.train.elrs, ft.data_key)
    n_new = len(config.train.elrs)
    source_elr = [float(meta["elr"][i]) for i in picks for _ in range(n_new)]
    info = {
        "elr": np.asarray([e for _ in picks for e in config.train.elrs], np.float64),
        "seed": np.asarray([int(meta["seed"][i]) for i in picks for _ in range(n_new)], np.int64),
        "source_elr": np.asarray(source_elr, np.float64),
        "source_member": np.asarray([i for i in picks for _ in range(n_new)], np.int64),
        "source_epoch": np.full(len(picks) * n_new, ft.epoch, np.int64),
    }
    return run_grid(
        config,
        state,
        trainer,
        ds,
        out=out,
        overwrite=overwrite,
        progress=progress,
        member_info=info,
        checkpoint_extra={"source_elr": source_elr},
    )


__all__ = ["build_finetune_grid", "finetune_config", "run_finetune"]
