"""Fine-tuning grids of grids: (pre-trained members) x (new ELRs) in one vmapped run.

``three-regimes finetune --from DIR --epoch E --elrs 1e-5,1e-4 --epochs N --out DIR2``
takes the members of the sweep in ``DIR`` at its checkpoint ``E`` (optionally
only those with the ELRs in ``--members``) and trains each of them at each new
ELR, all in one grid (paper Fig. 3 right, 5, 17, 18, 23).

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
- Checkpoints of the fine-tune (its first and last epoch, and every
  ``checkpoint_every`` epochs) go to ``DIR2/checkpoints`` for interpolation;
  their meta holds the source's sweep config (to rebuild the model), the
  fine-tune config under ``finetune`` and each member's ``source_elr``.

The results directory has the sweep format (``metrics.npz``, ``summary.json``,
``config.json`` with ``"kind": "finetune"``) plus ``source_elr``,
``source_epoch`` and ``source_member`` per member in ``metrics.npz``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.checkpoint import (
    CHECKPOINTS,
    GridCheckpointer,
    available_epochs,
    load_checkpoint,
    read_meta,
)
from three_regimes_jax.errors import UserError
from three_regimes_jax.grid import GridState, member, shard_grid, stack
from three_regimes_jax.loop import DeviceData, SharpnessSettings, train_grid
from three_regimes_jax.results import FORMAT_VERSION, Results, check_out_dir, write_results
from three_regimes_jax.sweep import SweepConfig, load_sweep_data, make_trainer, summarize

DATA_KEYS = ("continue", "new")
# Folded into the data keys of members fine-tuned with data_key="new".
NEW_ORDER_SALT = 0x46544E


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning grid (written to ``config.json`` with ``kind="finetune"``).

    Attributes:
      source: results directory of the pre-trained sweep (with checkpoints).
      epoch: source checkpoint epoch to start from (0: the initialisation).
      elrs: new ELRs, each > 0.
      epochs: number of fine-tuning epochs.
      members: source ELRs to fine-tune (``()``: every source member).
      data_key: ``"continue"`` or ``"new"`` batch order (module docstring).
      sharpness_every: measure sharpness every K epochs (0: off), as in sweeps.
      checkpoint_every: besides the first (``epoch``) and the last epoch, which
        are always checkpointed, save every N epochs from ``epoch`` on (0: off).
    """

    source: str
    epoch: int
    elrs: tuple[float, ...]
    epochs: int
    members: tuple[float, ...] = ()
    data_key: str = "continue"
    sharpness_every: int = 0
    checkpoint_every: int = 0

    def __post_init__(self):
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "elrs", tuple(float(e) for e in self.elrs))
        object.__setattr__(self, "members", tuple(float(e) for e in self.members))

    def validate(self) -> FinetuneConfig:
        """Raises :class:`UserError` on bad values (the source is checked on load)."""
        if not self.elrs:
            raise UserError("--elrs is empty: give at least one fine-tuning ELR")
        for elr in (*self.elrs, *self.members):
            if not (math.isfinite(elr) and elr > 0):
                raise UserError(f"every ELR must be a finite number > 0, got {elr}")
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.epoch < 0:
            raise UserError(f"--epoch must be >= 0, got {self.epoch}")
        if self.data_key not in DATA_KEYS:
            raise UserError(f"--data-key must be one of {', '.join(DATA_KEYS)}")
        if self.sharpness_every < 0 or self.checkpoint_every < 0:
            raise UserError("--sharpness-every and --checkpoint-every must be >= 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict with ``kind`` and ``format_version``."""
        d = dataclasses.asdict(self)
        d.update(kind="finetune", format_version=FORMAT_VERSION)
        d["elrs"], d["members"] = list(self.elrs), list(self.members)
        return d


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
    source_state: GridState, picks: list[int], elrs: tuple[float, ...], data_key: str
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
            opt = src.opt_state._replace(elr=jax.numpy.asarray(elr, jax.numpy.float32))
            members.append(src.replace(opt_state=opt, data_key=key))
    return stack(members)


def run_finetune(
    config: FinetuneConfig,
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Results:
    """Fine-tunes the chosen pre-trained members at every new ELR in one grid.

    Args:
      config: the fine-tune.
      out: results directory (checked before training, written at the end).
      overwrite: allow ``out`` to hold a different run.
      progress: tqdm bar over epochs.

    Returns:
      :class:`Results` (``metrics`` as in ``metrics.npz``, with ``source_*``).

    Raises:
      UserError: bad config, missing source/checkpoint or unusable ``out``.
    """
    config.validate()
    src_dir = Path(config.source)
    if not available_epochs(src_dir):
        raise UserError(
            f"--from {src_dir} has no checkpoints; run the sweep with --checkpoint-epochs, "
            "--checkpoint-every or --checkpoint-log"
        )
    meta = read_meta(src_dir, config.epoch)
    source = SweepConfig.from_dict(meta["config"])
    picks = _select([float(e) for e in meta["elr"]], config.members, f"{src_dir}")
    cfg = {**config.to_dict(), "source_config": meta["config"]}
    if out is not None:
        check_out_dir(out, cfg, overwrite)
    ds = load_sweep_data(source)
    trainer = make_trainer(source, ds.num_classes, ds.image_shape)
    src_state, _ = load_checkpoint(src_dir, config.epoch)
    state = build_finetune_grid(src_state, picks, config.elrs, config.data_key)
    if trainer.strategy == "vmap":
        state = shard_grid(state)
    n_new = len(config.elrs)
    source_elr = [float(meta["elr"][i]) for i in picks for _ in range(n_new)]
    seeds = [int(meta["seed"][i]) for i in picks for _ in range(n_new)]
    ckpt = None
    if out is not None:
        # Checkpoints keep the source's sweep config (it rebuilds the model) and
        # the fine-tune's own config and source ELRs as extra meta.
        ckpt = GridCheckpointer(
            out,
            config=meta["config"],
            num_classes=ds.num_classes,
            input_shape=ds.image_shape,
            seeds=seeds,
        )
        extra = {"finetune": cfg, "source_elr": source_elr}
        last = config.epoch + config.epochs
        every = config.checkpoint_every
        schedule = {config.epoch, last}
        schedule |= set(range(config.epoch, last, every)) if every else set()
        if overwrite:
            shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
        ckpt.save(config.epoch, state, extra, overwrite=True)

    def on_epoch(epoch: int, state: GridState, history) -> None:
        if ckpt is not None and epoch in schedule:
            ckpt.save(epoch, state, extra, overwrite=True)

    t0 = time.perf_counter()
    sharp = dataclasses.replace(source.sharpness_settings, every=config.sharpness_every)
    state, history = train_grid(
        trainer,
        state,
        DeviceData.from_dataset(ds),
        sharp if config.sharpness_every else SharpnessSettings(),
        start_epoch=config.epoch,
        end_epoch=config.epoch + config.epochs,
        progress=progress,
        on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.close()
    metrics = {
        "elr": np.asarray([e for _ in picks for e in config.elrs], np.float64),
        "seed": np.asarray(seeds, np.int64),
        "source_elr": np.asarray(source_elr, np.float64),
        "source_member": np.asarray([i for i in picks for _ in range(n_new)], np.int64),
        "source_epoch": np.full(len(picks) * n_new, config.epoch, np.int64),
        **history.arrays(),
        "group_names": np.asarray(trainer.group_names, dtype=str),
    }
    summary = summarize(metrics, seconds, trainer.strategy, config.epochs)
    for row, s_elr in zip(summary["members"], metrics["source_elr"], strict=True):
        row["source_elr"] = float(s_elr)
        row["source_epoch"] = config.epoch
    res = Results(config=cfg, metrics=metrics, summary=summary, state=state)
    if out is not None:
        write_results(out, cfg, metrics, summary)
    return res
