"""Sweeps: ``run_sweep`` over ELR x seed on the sphere, or LR x weight decay x seed.

In a whole-space run (``train.mode == "whole"``) ``metrics["elr"]`` holds each
member's initial LR (the swept step size, which every plot and table keys
on), beside ``lr`` and ``weight_decay``.

The Python API mirrors ``three-regimes sweep``::

    from three_regimes_jax import Config, run_sweep, load_results
    cfg = Config.from_flat(model="mlp_si", dataset="digits", elrs=(1e-3, 1e-2, 1e-1), epochs=5)
    res = run_sweep(cfg, out="runs/x")
    res.metrics["train_loss"]   # [G, T]
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.engine.data import Dataset
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results
from three_regimes_jax.studies.output import check_out, claim_run
from three_regimes_jax.studies.run import (
    is_writer,
    load_data,
    make_trainer,
    run_grid,
    sync_processes,
)


def run_sweep(
    config: Config,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> Results:
    """Trains the whole ELR x seed grid and measures every member each epoch.

    With checkpointing on (``config.checkpoint``), the whole grid state is
    saved to ``out/checkpoints/<epoch>`` (Orbax) with the measurement history up
    to it, so ``resume=True`` continues an interrupted run from its latest
    checkpoint and writes the same ``metrics.npz``, byte for byte, as an
    uninterrupted run.

    Args:
      config: the sweep (a :class:`~three_regimes_jax.config.Config` without ``finetune``).
      out: results directory, written at the end (checked before training);
        required for checkpointing.
      overwrite: allow ``out`` to hold a different run (its checkpoints are
        deleted).
      resume: continue the interrupted run in ``out`` from its latest checkpoint.
      progress: show a tqdm bar over epochs (loss range across the grid).
      dataset: an already loaded dataset (else loaded from the config).

    Returns:
      :class:`Results` with ``metrics`` as in ``metrics.npz`` and the final state.

    Raises:
      UserError: missing dataset, unusable ``out`` (another run's, another
        process's), nothing to resume, or an OS error such as a full disk;
        nothing is left in ``out`` but checkpoints ``--resume`` can use.
      Interrupted: Ctrl-C, saying what was kept.
    """
    if not isinstance(config, Config) or config.finetune is not None:
        raise UserError("run_sweep needs a sweep Config (use run_finetune for fine-tunes)")
    check_out(config, out, overwrite=overwrite, resume=resume)  # before loading any data
    # ``--distributed``: every process checks ``out``, then process 0 alone claims
    # (and writes) it while the others only read it (a resume's checkpoint).
    sync_processes("checked")
    claimed = (
        claim_run(config, out, overwrite=overwrite, resume=resume)
        if is_writer()
        else contextlib.nullcontext()
    )
    with claimed:
        sync_processes("claimed")
        ds = dataset if dataset is not None else load_data(config)
        trainer = make_trainer(config, ds.num_classes, ds.image_shape)
        state = trainer.init(config.member_hypers, config.member_seeds, ds.image_shape)
        info = {
            "elr": np.asarray(config.member_elrs, np.float64),
            "seed": np.asarray(config.member_seeds, np.int64),
        }
        if config.scheduled:
            info["elr_schedule"] = np.asarray(config.member_schedules, dtype=str)
        if config.whole:
            info["lr"] = np.asarray(config.member_lrs, np.float64)
            info["weight_decay"] = np.asarray(config.member_weight_decays, np.float64)
        return run_grid(
            config,
            state,
            trainer,
            ds,
            out=out,
            overwrite=overwrite,
            resume=resume,
            progress=progress,
            member_info=info,
        )


__all__ = ["run_sweep"]
