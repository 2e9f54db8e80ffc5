"""The one run driver: train a grid from a config, measure, checkpoint, summarise, write.

Sweeps (:mod:`~three_regimes_jax.studies.sweep`) and fine-tunes
(:mod:`~three_regimes_jax.studies.finetune`) differ only in where their first
grid state comes from; everything after that is :func:`run_grid`:

1. pre-flight checks of ``out`` (nothing is written if they fail);
2. the checkpoint schedule and the first checkpoint (or the resume point);
3. the epoch loop (:func:`~three_regimes_jax.engine.loop.train_grid`), with a
   checkpoint, and the history it needs to resume, at every scheduled epoch;
4. the metric arrays of ``metrics.npz``, the summary and the atomic write.

It also rebuilds what a run needs from a config alone: the dataset
(:func:`load_data`), the compiled trainer (:func:`make_trainer`) and, from a
checkpoint's meta, the abstract grid state to restore into
(:func:`state_template`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.analysis.report import check_random_walk_pair
from three_regimes_jax.config import Config
from three_regimes_jax.engine.data import Dataset, augment_pad_value, load_dataset
from three_regimes_jax.engine.grid import GridState, member, shard_grid
from three_regimes_jax.engine.loop import (
    EPOCH_METRICS,
    DeviceData,
    History,
    SharpnessSettings,
    train_grid,
)
from three_regimes_jax.engine.memory import (
    MB,
    MemoryPlan,
    device_limit_bytes,
    member_bytes,
    plan_chunks,
)
from three_regimes_jax.engine.metrics import SHARPNESS_KEYS
from three_regimes_jax.engine.models import input_size_of
from three_regimes_jax.engine.stats import filter_groups_of, n_si_params
from three_regimes_jax.engine.trainer import GridTrainer
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import (
    CHECKPOINTS,
    GridCheckpointer,
    complete_epochs,
    load_checkpoint,
    local_copy,
)
from three_regimes_jax.storage.results import (
    Results,
    load_results,
    write_npz,
    write_results,
)
from three_regimes_jax.studies.output import HISTORY_FILE, check_out


def load_data(config: Config) -> Dataset:
    """The config's dataset, padded to the input size its model needs."""
    d = config.data
    text = {}
    if d.dataset == "ag_news":
        text = dict(split_test=d.split_test, vocab_size=d.vocab_size, max_len=d.max_len)
    ds = load_dataset(
        d.dataset,
        d.data_dir,
        use_data_size=d.use_data_size,
        label_noise=d.label_noise,
        noise_seed=d.noise_seed,
        pad_to=input_size_of(config.model.name),
        use_test_size=d.use_test_size,
        **text,
    )
    if config.train.augment and ds.image_shape[:2] != (32, 32):
        raise UserError(
            f"--augment crops 32 x 32 images; {d.dataset} images are "
            f"{ds.image_shape[0]} x {ds.image_shape[1]}"
        )
    return ds


def make_trainer(config: Config, num_classes: int, input_shape: tuple[int, ...]) -> GridTrainer:
    """The compiled grid trainer of a config's model (and augmentation, if on)."""
    pad = augment_pad_value(config.data.dataset) if config.train.augment else None
    return GridTrainer.from_config(config, num_classes, input_shape, pad_value=pad)


def state_template(meta: Mapping[str, Any]) -> GridState:
    """The abstract grid state (shapes and dtypes) of a checkpoint, from its meta alone.

    Rebuilds the model from ``meta["config"]`` (either config layout), with
    ``num_classes``, ``input_shape`` and ``members`` from the meta, without
    computing anything.
    """
    try:
        num_classes, shape = int(meta["num_classes"]), tuple(meta["input_shape"])
        g = int(meta["members"])
        raw = meta["config"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint meta is incomplete ({e}); it cannot be restored") from None
    config = Config.from_dict(raw)
    # Any hyperparameters of the right kind: only the shapes and dtypes matter.
    hyper = {"lr": 1.0, "weight_decay": 0.0} if config.whole else {"elr": 1.0}
    # Built inside eval_shape: the model's SI-mask setup stays abstract (no compute).
    return jax.eval_shape(
        lambda: make_trainer(config, num_classes, shape).init([hyper] * g, [0] * g, shape)
    )


def plan_memory(config: Config, trainer: GridTrainer, state: GridState, ds: Dataset) -> MemoryPlan:
    """How the grid fits in ``run.memory_limit_mb`` (default: the device's memory).

    Planned from shapes only, before anything compiles (see
    :mod:`~three_regimes_jax.engine.memory`).

    Raises:
      UserError: not even one member fits.
    """
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    batch = max(trainer.batch_size, trainer.eval_batch_size)
    per = member_bytes(trainer.model, one, ds.image_shape, batch)["total"]
    shared = sum(a.nbytes for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    limit_mb = config.run.memory_limit_mb
    limit = device_limit_bytes() if limit_mb is None else int(limit_mb * MB)
    return plan_chunks(state.size, per, shared, limit, devices=len(jax.devices()))


def summarize(
    metrics: Mapping[str, np.ndarray],
    seconds: float,
    strategy: str,
    epochs: int,
    precision: str = "highest",
) -> dict[str, Any]:
    """The ``summary.json`` dict: final values per member and run facts."""
    members = []
    for i in range(len(metrics["elr"])):
        row = {"elr": float(metrics["elr"][i]), "seed": int(metrics["seed"][i])}
        for k in ("lr", "weight_decay"):  # whole-space runs
            if k in metrics:
                row[k] = float(metrics[k][i])
        for k in EPOCH_METRICS:
            row[k] = float(metrics[k][i, -1])
        row["test_error"] = 1.0 - row["test_acc"]
        for k in SHARPNESS_KEYS:
            if metrics[k].shape[1]:
                row[k] = float(metrics[k][i, -1])
        row["diverged"] = bool(metrics["diverged"][i])
        row["diverged_epoch"] = int(metrics["diverged_epoch"][i])
        for k in ("source_elr", "source_epoch"):
            if k in metrics:
                row[k] = metrics[k][i].item()
        members.append(row)
    return {
        "members": members,
        "epochs": epochs,
        "wall_time_s": round(seconds, 3),
        "strategy": strategy,
        "precision": precision,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


def random_walk_norms(
    config: Config, elrs: np.ndarray, seeds: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """The regular run's per-epoch step lengths that a random walk replicates (App. M).

    For each member, the member of ``config.train.random_walk_from`` with the
    same ELR and seed; its effective gradient norm along the trajectory
    (``eff_grad_norm_traj``: the mean of ``||grad_SI L_B|| * rho`` over the
    epoch's steps; results written before it existed hold it as
    ``eff_grad_norm``) is the length, in effective units, of the random walk's
    steps in that epoch.

    Returns:
      ``(epochs [T], norms [G, T])``, or None without ``random_walk_from``.

    Raises:
      UserError: the regular run lacks a member or an epoch this run needs.
    """
    src = config.train.random_walk_from
    if src is None:
        return None
    ref = load_results(src)
    check_random_walk_pair(
        ref.config,
        config.to_dict(),
        regular=f"--random-walk-from {src}",
        walk="this run",
        free=("elrs", "seeds", "epochs", "grid"),
    )
    m = ref.metrics
    key = "eff_grad_norm_traj" if "eff_grad_norm_traj" in m else "eff_grad_norm"
    missing_epochs = sorted(
        set(range(config.start_epoch + 1, config.end_epoch + 1)) - set(int(e) for e in m["epoch"])
    )
    if missing_epochs:
        raise UserError(
            f"--random-walk-from {src} has no epoch {missing_epochs[0]}; the regular run "
            f"must cover epochs {config.start_epoch + 1}..{config.end_epoch}"
        )
    rows = []
    for elr, seed in zip(elrs, seeds, strict=True):
        hits = np.flatnonzero(np.isclose(m["elr"], elr, rtol=1e-6) & (m["seed"] == seed))
        if not len(hits):
            raise UserError(
                f"--random-walk-from {src} has no member with ELR {elr:g} and seed {seed}; "
                "run the regular grid with the same ELRs and seeds"
            )
        rows.append(np.asarray(m[key][hits[0]], np.float32))
    return np.asarray(m["epoch"], np.int64), np.stack(rows)


def _save(ckpt: GridCheckpointer, epoch: int, state: GridState, history: History, extra) -> None:
    """Saves the grid state, then the history it needs to resume (both atomic)."""
    ckpt.save(epoch, state, extra, overwrite=True)
    write_npz(ckpt.directory / HISTORY_FILE, history.raw_arrays())


def _resume(
    out: Path, template: GridState, config: Config
) -> tuple[GridState, History, int] | None:
    """State and history at the latest complete checkpoint with its history saved.

    None when there is none (a run killed during its first checkpoint), so
    the run starts over.
    """
    path = out / CHECKPOINTS / HISTORY_FILE
    if not path.is_file():
        return None  # killed before the first history was saved: start over
    try:
        with np.load(path, allow_pickle=False) as z:
            history = History.from_raw({k: z[k] for k in z.files})
    except Exception as e:  # noqa: BLE001 - zip/npy errors of a damaged file
        raise UserError(
            f"cannot resume {out}: its {HISTORY_FILE} is unreadable ({type(e).__name__}); "
            "start over with --overwrite"
        ) from None
    recorded = history.epochs[-1] if history.epochs else config.start_epoch
    usable = [e for e in complete_epochs(out) if config.start_epoch <= e <= recorded]
    if not usable:
        return None  # no complete checkpoint yet: start over
    epoch = usable[-1]
    state, _ = load_checkpoint(out, epoch, template=template, config=config.to_dict())
    # Several processes: numpy, which the grid functions place over every process's
    # devices (a restored array is committed to this process's device only).
    return local_copy(state), history.truncate(epoch), epoch


def run_grid(
    config: Config,
    state: GridState,
    trainer: GridTrainer,
    ds: Dataset,
    *,
    out: str | Path | None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    member_info: Mapping[str, np.ndarray],
    checkpoint_extra: Mapping[str, Any] | None = None,
) -> Results:
    """Trains ``state`` from ``config.start_epoch`` to ``config.end_epoch`` and records it all.

    Args:
      config: the run (validated at construction).
      state: the grid state at ``config.start_epoch``.
      trainer: the compiled trainer of the config's model.
      ds: the dataset.
      out: results directory (checked before training, written at the end);
        required for checkpointing and resuming.
      overwrite: allow ``out`` to hold a different run (its checkpoints are deleted).
      resume: continue the interrupted run in ``out`` from its latest checkpoint.
      progress: tqdm bar over epochs.
      member_info: per-member arrays ``[G]`` put first in ``metrics.npz``:
        ``elr`` and ``seed`` always, ``source_*`` for fine-tunes.
      checkpoint_extra: extra JSON meta of every checkpoint.

    Returns:
      :class:`~three_regimes_jax.storage.results.Results` with the final state.
    """
    # ``--distributed``: process 0 writes, all read (the others checked ``out``
    # before process 0 claimed it: ``run_sweep``)
    writer = is_writer()
    schedule = set(check_out(config, out, overwrite=overwrite, resume=resume) if writer else ())
    if config.train.drop_last and config.train.batch_size > ds.x_train.shape[0]:
        raise UserError(
            f"--batch-size {config.train.batch_size} is larger than the {ds.x_train.shape[0]} "
            "training examples, so --drop-last would drop every batch; use a smaller batch"
        )
    plan = plan_memory(config, trainer, state, ds)
    trainer.chunk_size = plan.chunk_size if plan.chunks > 1 else None
    if plan.chunks > 1:
        print(f"three-regimes: {plan.line()}", file=sys.stderr)
    # Members start spread over the devices (a no-op on one device, or when G does not
    # divide; every compiled grid function splits the grid over the devices anyway).
    state = shard_grid(state)
    ckpt = None
    if schedule:
        ckpt = GridCheckpointer(
            out,
            config=config.to_dict(),
            num_classes=ds.num_classes,
            input_shape=ds.image_shape,
            seeds=[int(s) for s in member_info["seed"]],
        )
    try:
        start, history = config.start_epoch, None
        resumed = _resume(Path(out), state, config) if resume else None
        sync_processes("resumed")  # every process has read before process 0 writes
        if resumed is not None:
            state, history, start = resumed
        elif ckpt is not None:
            # Anything here is this run's own (checked by check_out): an earlier
            # attempt's incomplete checkpoints, or a finished run being redone.
            shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
            _save(
                ckpt,
                start,
                state,
                History.empty(state.size, trainer.filter_groups),
                checkpoint_extra,
            )

        def on_epoch(epoch: int, state: GridState, history: History) -> None:
            if ckpt is not None and epoch in schedule:
                _save(ckpt, epoch, state, history, checkpoint_extra)

        walk = random_walk_norms(config, member_info["elr"], member_info["seed"])
        step_norms = None
        if walk is not None:
            walk_epochs, walk_norms = walk

            def step_norms(epoch: int) -> np.ndarray:
                return walk_norms[:, int(np.flatnonzero(walk_epochs == epoch)[0])]

        m = config.measure
        log_members = None
        if m.filter_log_elrs:
            elrs = np.asarray(member_info["elr"])
            log_members = [
                i for i, e in enumerate(elrs) if np.isclose(e, m.filter_log_elrs, rtol=1e-6).any()
            ]
            if not log_members:
                named = ",".join(f"{e:g}" for e in m.filter_log_elrs)
                have = ", ".join(f"{e:g}" for e in dict.fromkeys(elrs))
                raise UserError(
                    f"--filter-log-elrs {named} names no member; the grid's ELRs are {have}"
                )
        t0 = time.perf_counter()
        state, history = train_grid(
            trainer,
            state,
            DeviceData.from_dataset(ds),
            SharpnessSettings(
                m.sharpness_every, m.sharpness_size, m.sharpness_probes, m.sharpness_iters
            ),
            start_epoch=start,
            end_epoch=config.end_epoch,
            history=history,
            progress=progress,
            on_epoch=on_epoch,
            step_norms=step_norms,
            log_steps=tuple(m.filter_log_steps) or None,
            log_members=log_members,
        )
    finally:
        if ckpt is not None:
            ckpt.close()  # also after a failure: Orbax holds threads and files
    seconds = time.perf_counter() - t0
    metrics = {
        **member_info,
        **history.arrays(n_si_params(member(state, 0).params, trainer.si_mask)),
        "group_names": np.asarray(trainer.group_names, dtype=str),
        "group_individually_si": np.asarray(trainer.group_individually_si, bool),
    }
    if trainer.filter_groups:
        metrics["filter_group"] = filter_groups_of(member(state, 0).params, trainer.si_mask)
    summary = summarize(
        metrics, seconds, trainer.strategy, config.train.epochs, config.run.precision
    )
    summary["memory"] = plan.to_dict()
    if start > config.start_epoch:
        summary["resumed_from_epoch"] = start
    cfg = config.to_dict()
    res = Results(config=cfg, metrics=metrics, summary=summary, state=state)
    if out is not None and writer:
        write_results(out, cfg, metrics, summary)
    return res


def is_writer() -> bool:
    """Whether this process writes results: always, but for processes 1.. of ``--distributed``."""
    return jax.process_index() == 0


def sync_processes(name: str) -> None:
    """Waits for every process of a ``--distributed`` run to get here (no-op for one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
