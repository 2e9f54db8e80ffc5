"""ELR x seed sweeps: the configuration object and ``run_sweep``.

The Python API mirrors ``three-regimes sweep``::

    from three_regimes_jax import SweepConfig, run_sweep, load_results
    res = run_sweep(SweepConfig(model="mlp_si", dataset="digits",
                                elrs=(1e-3, 1e-2, 1e-1), epochs=5), out="runs/x")
    res.metrics["train_loss"]   # [G, T]
"""

from __future__ import annotations

import dataclasses
import math
import os
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
    checkpoint_epochs,
    load_checkpoint,
    read_meta,
)
from three_regimes_jax.data import DATASETS, Dataset, load_dataset
from three_regimes_jax.errors import UserError
from three_regimes_jax.grid import (
    STRATEGIES,
    GridState,
    GridTrainer,
    shard_grid,
)
from three_regimes_jax.loop import EPOCH_METRICS, DeviceData, History, SharpnessSettings, train_grid
from three_regimes_jax.metrics import SHARPNESS_KEYS
from three_regimes_jax.models import CONVNET_INPUT_SIZE, MODELS, build_model, si_mask_of
from three_regimes_jax.results import (
    FORMAT_VERSION,
    Results,
    check_out_dir,
    check_writable,
    differing_keys,
    write_npz,
    write_results,
)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep (written to ``config.json``).

    The grid is ``elrs x seeds``, ELR-major: member ``i * len(seeds) + j`` has
    ELR ``elrs[i]`` and seed ``seeds[j]``.  A seed fixes a member's init and
    batch order; with one seed every member shares both, as in the paper.

    Attributes:
      model: ``"mlp_si"`` or ``"convnet_si"``.
      dataset: ``"digits"`` (embedded), ``"mnist"``, ``"cifar10"``, ``"cifar100"``.
      data_dir: folder with the original files (else ``THREE_REGIMES_DATA_DIR``/TFDS).
      elrs: effective learning rates, each > 0.
      seeds: seeds.
      epochs: number of epochs.
      batch_size: mini-batch size (paper: 128).
      width: ConvNetSI width ``k``.
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      init_scale: norm of the frozen last layer (paper: 10).
      use_data_size: train on the first N training examples only.
      label_noise: fraction of training labels replaced by random ones.
      noise_seed: seed of the label noise.
      strategy: ``"auto"``, ``"vmap"`` or ``"map"`` (see ``grid.choose_strategy``).
      drop_last: drop each epoch's last partial batch (default: keep, as PyTorch).
      random_walk: random-walk baseline (App. M): random tangent directions of
        the real gradient's length replace the gradients.
      sharpness_every: measure sharpness every K epochs and at the last one (0: off).
      sharpness_size: size of the fixed training subset (the first examples).
      sharpness_probes: Hutchinson probes of the FIM and Hessian traces.
      sharpness_iters: Lanczos steps of the top eigenvalues.
      checkpoint_epochs: save Orbax checkpoints of the whole grid after these
        epochs (0 = the initial state).
      checkpoint_every: also every N epochs (0: off).
      checkpoint_log: also the paper's log-spaced schedule (every epoch below
        20, every 5th below 100, every 10th below 200, every 50th below 1000, ...).
        With any checkpointing on, epochs 0 and the last one are always saved.
    """

    model: str = "mlp_si"
    dataset: str = "digits"
    data_dir: str | None = None
    elrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    batch_size: int = 128
    width: int = 32
    depth: int = 3
    hidden: tuple[int, ...] = (300, 100)
    init_scale: float = 10.0
    use_data_size: int | None = None
    label_noise: float = 0.0
    noise_seed: int = 0
    strategy: str = "auto"
    drop_last: bool = False
    random_walk: bool = False
    sharpness_every: int = 0
    sharpness_size: int = 2048
    sharpness_probes: int = 8
    sharpness_iters: int = 20
    checkpoint_epochs: tuple[int, ...] = ()
    checkpoint_every: int = 0
    checkpoint_log: bool = False

    def __post_init__(self):
        for name in ("elrs", "seeds", "hidden", "checkpoint_epochs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def validate(self) -> SweepConfig:
        """Raises :class:`UserError` (one line, how to fix) on bad values."""
        if self.model not in MODELS:
            raise UserError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise UserError(
                f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}"
            )
        if not self.elrs:
            raise UserError("the grid is empty: give at least one ELR, e.g. --elrs 1e-3,1e-2")
        if not self.seeds:
            raise UserError("the grid is empty: give at least one seed, e.g. --seeds 0")
        for elr in self.elrs:
            if not (math.isfinite(elr) and elr > 0):
                raise UserError(f"ELR must be a finite number > 0, got {elr}")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.elrs)) != len(self.elrs):
            raise UserError("--elrs and --seeds must not repeat values")
        checks = [
            ("epochs", self.epochs, 1),
            ("batch size", self.batch_size, 1),
            ("width", self.width, 1),
            ("depth", self.depth, 1),
            ("--sharpness-every", self.sharpness_every, 0),
            ("--sharpness-size", self.sharpness_size, 1),
            ("--sharpness-probes", self.sharpness_probes, 1),
            ("--sharpness-iters", self.sharpness_iters, 1),
        ]
        for what, value, low in checks:
            if value < low:
                raise UserError(f"{what} must be >= {low}, got {value}")
        if self.sharpness_every and self.sharpness_size < self.batch_size:
            raise UserError(
                f"--sharpness-size ({self.sharpness_size}) must be >= --batch-size "
                f"({self.batch_size}): sharpness is measured on mini-batches of the training size"
            )
        if any(h < 1 for h in self.hidden):
            raise UserError(f"hidden widths must be >= 1, got {self.hidden}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise UserError(f"label noise must be in [0, 1], got {self.label_noise}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}; choose: {', '.join(STRATEGIES)}")
        self.checkpoint_schedule  # noqa: B018 (raises UserError on bad epochs)
        return self

    @property
    def sharpness_settings(self) -> SharpnessSettings:
        """The sharpness fields as :class:`~three_regimes_jax.loop.SharpnessSettings`."""
        return SharpnessSettings(
            self.sharpness_every, self.sharpness_size, self.sharpness_probes, self.sharpness_iters
        )

    @property
    def checkpoint_schedule(self) -> list[int]:
        """Epochs to checkpoint (empty: checkpointing off); see ``checkpoint_epochs``."""
        return checkpoint_epochs(
            self.epochs, self.checkpoint_epochs, self.checkpoint_every, self.checkpoint_log
        )

    @property
    def member_elrs(self) -> list[float]:
        """ELR of each member (length G)."""
        return [e for e in self.elrs for _ in self.seeds]

    @property
    def member_seeds(self) -> list[int]:
        """Seed of each member (length G)."""
        return [s for _ in self.elrs for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, with ``kind`` and ``format_version``."""
        d = dataclasses.asdict(self)
        d.update(kind="sweep", format_version=FORMAT_VERSION)
        for k in ("elrs", "seeds", "hidden", "checkpoint_epochs"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepConfig:
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def load_sweep_data(config: SweepConfig) -> Dataset:
    """Loads the config's dataset, padded to 32x32 for ConvNetSI."""
    return load_dataset(
        config.dataset,
        config.data_dir,
        use_data_size=config.use_data_size,
        label_noise=config.label_noise,
        noise_seed=config.noise_seed,
        pad_to=CONVNET_INPUT_SIZE if config.model == "convnet_si" else None,
    )


def make_trainer(config: SweepConfig, num_classes: int, input_shape) -> GridTrainer:
    """The compiled grid trainer for a config's model."""
    model = build_model(
        config.model,
        num_classes,
        width=config.width,
        depth=config.depth,
        hidden=config.hidden,
        init_scale=config.init_scale,
    )
    si_mask = si_mask_of(model, input_shape)
    return GridTrainer(
        model,
        si_mask,
        batch_size=config.batch_size,
        strategy=config.strategy,
        drop_last=config.drop_last,
        random_walk=config.random_walk,
    )


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> Results:
    """Trains the whole ELR x seed grid and measures every member each epoch.

    With checkpointing on (``config.checkpoint_*``), the whole grid state is
    saved to ``out/checkpoints/<epoch>`` (Orbax) with the measurement history up
    to it, so ``resume=True`` continues an interrupted run from its latest
    checkpoint and writes the same ``metrics.npz``, byte for byte, as an
    uninterrupted run.

    Args:
      config: the sweep.
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
      UserError: bad config, missing dataset, unusable ``out`` or nothing to
        resume; nothing is written.
    """
    config.validate()
    cfg = config.to_dict()
    schedule = set(config.checkpoint_schedule)
    if (schedule or resume) and out is None:
        raise UserError("checkpointing and --resume need an output directory (--out DIR)")
    if out is not None:
        _check_sweep_out(Path(out), cfg, overwrite=overwrite, resume=resume)
    ds = dataset if dataset is not None else load_sweep_data(config)
    trainer = make_trainer(config, ds.num_classes, ds.image_shape)
    state = trainer.init(config.member_elrs, config.member_seeds, ds.image_shape)
    if trainer.strategy == "vmap":
        state = shard_grid(state)  # a no-op on one device
    ckpt = None
    if schedule:
        ckpt = GridCheckpointer(
            out, config=cfg, num_classes=ds.num_classes, input_shape=ds.image_shape
        )
    start, history = 0, None
    if resume:
        state, history, start = _resume(Path(out), state, cfg)
    elif ckpt is not None:
        if overwrite:
            shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)
        _save_checkpoint(ckpt, 0, state, History.empty(state.size))

    def on_epoch(epoch: int, state: GridState, history: History) -> None:
        if ckpt is not None and epoch in schedule:
            _save_checkpoint(ckpt, epoch, state, history)

    t0 = time.perf_counter()
    state, history = train_grid(
        trainer,
        state,
        DeviceData.from_dataset(ds),
        config.sharpness_settings,
        start_epoch=start,
        end_epoch=config.epochs,
        history=history,
        progress=progress,
        on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - t0
    if ckpt is not None:
        ckpt.close()
    metrics = {
        "elr": np.asarray(config.member_elrs, np.float64),
        "seed": np.asarray(config.member_seeds, np.int64),
        **history.arrays(),
        "group_names": np.asarray(trainer.group_names, dtype=str),
    }
    summary = summarize(metrics, seconds, trainer.strategy, config.epochs)
    if start:
        summary["resumed_from_epoch"] = start
    res = Results(config=cfg, metrics=metrics, summary=summary, state=state)
    if out is not None:
        write_results(out, cfg, metrics, summary)
    return res


HISTORY_FILE = "history.npz"


def _save_checkpoint(ckpt, epoch: int, state: GridState, history: History) -> None:
    """Saves the grid state, then the history it needs to resume (both atomic)."""
    ckpt.save(epoch, state, overwrite=True)
    write_npz(ckpt.directory / HISTORY_FILE, history.raw_arrays())


def _check_sweep_out(out: Path, cfg: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
    """Pre-flight checks of ``--out`` for a sweep (nothing is written)."""
    has_ckpts = bool(available_epochs(out)) if out.is_dir() else False
    if resume:
        check_writable(out)
        if overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass one of them")
        if not has_ckpts:
            raise UserError(
                f"nothing to resume in {out}: it has no checkpoints; run the sweep with "
                "--checkpoint-every N or --checkpoint-log to make it resumable"
            )
        diff = differing_keys(read_meta(out)["config"], cfg)
        if diff:
            raise UserError(
                f"cannot resume {out} with another config (differs in: {', '.join(diff)}); "
                "repeat the original command with --resume"
            )
        return
    if has_ckpts and not (out / "config.json").exists() and not overwrite:
        raise UserError(
            f"--out {out} holds an interrupted run; pass --resume to continue it "
            "or --overwrite to start over"
        )
    check_out_dir(out, cfg, overwrite)


def _resume(out: Path, template: GridState, cfg: dict[str, Any]):
    """State and history at the latest checkpoint that has its history saved."""
    path = out / CHECKPOINTS / HISTORY_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            history = History.from_raw({k: z[k] for k in z.files})
    except (OSError, ValueError) as e:
        raise UserError(f"cannot resume {out}: its {HISTORY_FILE} is unreadable ({e})") from None
    recorded = history.epochs[-1] if history.epochs else 0
    usable = [e for e in available_epochs(out) if e <= recorded]
    if not usable:
        raise UserError(f"cannot resume {out}: no checkpoint matches its history; use --overwrite")
    epoch = usable[-1]
    state, _ = load_checkpoint(out, epoch, template=template, config=cfg)
    return state, history.truncate(epoch), epoch


def summarize(
    metrics: dict[str, np.ndarray], seconds: float, strategy: str, epochs: int
) -> dict[str, Any]:
    """The ``summary.json`` dict: final values per member and run facts."""
    members = []
    for i in range(len(metrics["elr"])):
        row = {"elr": float(metrics["elr"][i]), "seed": int(metrics["seed"][i])}
        for k in EPOCH_METRICS:
            row[k] = float(metrics[k][i, -1])
        row["test_error"] = 1.0 - row["test_acc"]
        for k in SHARPNESS_KEYS:
            if metrics[k].shape[1]:
                row[k] = float(metrics[k][i, -1])
        row["diverged"] = bool(metrics["diverged"][i])
        row["diverged_epoch"] = int(metrics["diverged_epoch"][i])
        members.append(row)
    return {
        "members": members,
        "epochs": epochs,
        "wall_time_s": round(seconds, 3),
        "strategy": strategy,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


__all__ = [
    "History",
    "SweepConfig",
    "load_sweep_data",
    "make_trainer",
    "run_sweep",
    "summarize",
]
