"""Where a run writes: pre-flight checks of ``out``, its claim, and what a failure keeps.

Sweeps and fine-tunes check ``out`` before loading any data
(:func:`check_out`), then hold it for the whole run (:func:`claim_run`, a
:func:`~three_regimes_jax.storage.outdir.claim`): owned, locked, and after a
failure left with nothing but the checkpoints ``--resume`` can use
(:func:`resumable`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import CHECKPOINTS, complete_epochs
from three_regimes_jax.storage.outdir import (
    check_not_busy,
    check_out_path,
    check_owner,
    claim,
    overlaps,
    read_owner,
)
from three_regimes_jax.storage.results import config_diff
from three_regimes_jax.storage.schedule import checkpoint_epochs

HISTORY_FILE = "history.npz"


def schedule_of(config: Config, out: str | Path | None) -> list[int]:
    """The epochs to checkpoint: the config's schedule.

    A fine-tune with an ``out`` always saves its first and last epoch.
    """
    c = config.checkpoint
    return checkpoint_epochs(
        config.end_epoch,
        c.epochs,
        c.every,
        c.log,
        start=config.start_epoch,
        always=config.finetune is not None and out is not None,
    )


def reads_of(config: Config) -> list[str]:
    """The directories a run reads, which its ``out`` must not overlap."""
    paths = [config.train.random_walk_from]
    if config.finetune is not None:
        paths.extend(config.finetune.source.split(","))  # a sharded source: its shards
    return [p for p in paths if p]


def check_out(
    config: Config, out: str | Path | None, *, overwrite: bool, resume: bool
) -> list[int]:
    """Pre-flight checks of ``out`` (nothing is written); returns the checkpoint schedule.

    Raises:
      UserError: ``out`` is missing but needed, unusable, overlaps a path the
        run reads, holds something else (:func:`~three_regimes_jax.storage.
        outdir.check_owner`), or holds this run interrupted with resumable
        checkpoints and neither ``resume`` nor ``overwrite`` is given; or
        ``resume`` finds another run, no run, or a run without checkpoints.
    """
    schedule = schedule_of(config, out)
    if (schedule or resume) and out is None:
        raise UserError("checkpointing and --resume need an output directory (--out DIR)")
    if out is None:
        return schedule
    out = check_out_path(out)
    for src in reads_of(config):
        if overlaps(out, src):
            raise UserError(f"--out {out} overlaps {src}, which this run reads; pick another --out")
    cfg = config.to_dict()
    if resume:
        if overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one of them")
        check_not_busy(out, flag="--out ")
        owner = read_owner(out) if out.is_dir() else None
        if owner is None or owner["command"] != config.kind:
            raise UserError(
                f"nothing to resume in {out}: it holds no interrupted {config.kind}; "
                "run the command without --resume"
            )
        diff = config_diff(owner.get("config"), cfg)
        if diff:
            raise UserError(
                f"cannot resume {out} with another config (differs in: {', '.join(diff)}); "
                "repeat the original command with --resume"
            )
        if not schedule:
            raise UserError(
                "--resume needs checkpoints, and this run saves none; add --checkpoint-every N "
                "or --checkpoint-log"
            )
        return schedule
    interrupted = out.is_dir() and bool(complete_epochs(out)) and not (out / "config.json").exists()
    if interrupted and not overwrite:
        raise UserError(
            f"--out {out} holds an interrupted run with resumable checkpoints; pass --resume "
            "to continue it or --overwrite to start over"
        )
    check_not_busy(out, flag="--out ")
    check_owner(out, config.kind, cfg, overwrite, config_diff)
    return schedule


def resumable(out: Path) -> dict[str, str]:
    """What of a failed run in ``out`` is worth keeping: checkpoints ``--resume`` can use."""
    epochs = complete_epochs(out)
    if not epochs or not (out / CHECKPOINTS / HISTORY_FILE).is_file():
        return {}
    shown = ", ".join(map(str, epochs))
    return {CHECKPOINTS: f"checkpoints at epochs {shown} in {out} (continue with --resume)"}


def claim_run(
    config: Config, out: str | Path | None, *, overwrite: bool, resume: bool
) -> contextlib.AbstractContextManager:
    """Claims ``out`` for this run (:func:`~three_regimes_jax.storage.outdir.claim`).

    After a failure only checkpoints ``--resume`` can use are kept; a fine-tune
    cannot be resumed, so it keeps nothing.
    """
    if out is None:
        return contextlib.nullcontext()
    return claim(
        out,
        command=config.kind,
        config=config.to_dict(),
        overwrite=overwrite,
        reads=reads_of(config),
        differ=config_diff,
        keep=resumable if config.finetune is None else None,
    )


__all__ = ["HISTORY_FILE", "check_out", "claim_run", "reads_of", "resumable", "schedule_of"]
