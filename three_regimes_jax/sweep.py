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
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from three_regimes_jax.data import DATASETS, Dataset, load_dataset
from three_regimes_jax.errors import UserError
from three_regimes_jax.grid import (
    STRATEGIES,
    GridState,
    GridTrainer,
    finite_members,
    shard_grid,
)
from three_regimes_jax.models import CONVNET_INPUT_SIZE, MODELS, build_model, init_model
from three_regimes_jax.results import FORMAT_VERSION, Results, check_out_dir, write_results


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

    def __post_init__(self):
        for name in ("elrs", "seeds", "hidden"):
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
        ]
        for what, value, low in checks:
            if value < low:
                raise UserError(f"{what} must be >= {low}, got {value}")
        if any(h < 1 for h in self.hidden):
            raise UserError(f"hidden widths must be >= 1, got {self.hidden}")
        if not 0.0 <= self.label_noise <= 1.0:
            raise UserError(f"label noise must be in [0, 1], got {self.label_noise}")
        if self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}; choose: {', '.join(STRATEGIES)}")
        return self

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
        for k in ("elrs", "seeds", "hidden"):
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
    si_mask = init_model(model, jax.random.key(0), input_shape).si_mask
    return GridTrainer(
        model,
        si_mask,
        batch_size=config.batch_size,
        strategy=config.strategy,
        drop_last=config.drop_last,
    )


EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "eff_grad_norm", "si_norm")


def _progress(total: int, enabled: bool, g: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=f"{g} members", unit="epoch", leave=True)


def run_sweep(
    config: SweepConfig,
    out: str | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    dataset: Dataset | None = None,
) -> Results:
    """Trains the whole ELR x seed grid and measures every member each epoch.

    Args:
      config: the sweep.
      out: results directory to write at the end (checked before training).
      overwrite: allow ``out`` to hold a different run.
      progress: show a tqdm bar over epochs (loss range across the grid).
      dataset: an already loaded dataset (else loaded from the config).

    Returns:
      :class:`Results` with ``metrics`` as in ``metrics.npz`` and the final state.

    Raises:
      UserError: bad config, missing dataset or unusable ``out``; nothing is written.
    """
    config.validate()
    cfg = config.to_dict()
    if out is not None:
        check_out_dir(out, cfg, overwrite)
    ds = dataset if dataset is not None else load_sweep_data(config)
    trainer = make_trainer(config, ds.num_classes, ds.image_shape)
    state = trainer.init(config.member_elrs, config.member_seeds, ds.image_shape)
    if trainer.strategy == "vmap":
        state = shard_grid(state)  # a no-op on one device
    x_tr, y_tr = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
    x_te, y_te = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

    g, history = state.size, []
    diverged_epoch = np.full(g, -1)
    t0 = time.perf_counter()
    with _progress(config.epochs, progress, g) as bar:
        for epoch in range(config.epochs):
            state, train_m = trainer.train_epoch(state, x_tr, y_tr, epoch)
            eval_m = trainer.evaluate(state, x_tr, y_tr, x_te, y_te)
            m = jax.device_get({**train_m, **eval_m})
            newly = ~finite_members(state, m) & (diverged_epoch < 0)
            diverged_epoch[newly] = epoch + 1
            history.append(m)
            alive = diverged_epoch < 0
            if alive.any():
                lo, hi = m["train_loss"][alive].min(), m["train_loss"][alive].max()
                bar.set_postfix_str(
                    f"train loss {lo:.3g}..{hi:.3g}, diverged {int((~alive).sum())}"
                )
            bar.update(1)
    seconds = time.perf_counter() - t0
    metrics = _assemble(config, history, diverged_epoch, trainer.group_names)
    summary = _summary(config, metrics, seconds, trainer.strategy)
    res = Results(config=cfg, metrics=metrics, summary=summary, state=state)
    if out is not None:
        write_results(out, cfg, metrics, summary)
    return res


def _assemble(config, history, diverged_epoch, group_names) -> dict[str, np.ndarray]:
    keys = (*EPOCH_METRICS, "batch_loss", "batch_acc", "group_elr", "group_eff_grad_norm")
    keys = (*keys, "group_ess")
    metrics = {k: np.stack([h[k] for h in history], axis=1).astype(np.float32) for k in keys}
    epochs = np.arange(1, len(history) + 1)
    for i, e in enumerate(diverged_epoch):
        if e > 0:
            for k in keys:
                metrics[k][i, epochs >= e] = np.nan
    metrics.update(
        elr=np.asarray(config.member_elrs, np.float64),
        seed=np.asarray(config.member_seeds, np.int64),
        epoch=epochs,
        group_names=np.asarray(group_names, dtype=str),
        diverged=diverged_epoch > 0,
        diverged_epoch=diverged_epoch,
    )
    return metrics


def _summary(config, metrics, seconds, strategy) -> dict[str, Any]:
    members = []
    for i in range(len(metrics["elr"])):
        row = {"elr": float(metrics["elr"][i]), "seed": int(metrics["seed"][i])}
        for k in EPOCH_METRICS:
            row[k] = float(metrics[k][i, -1])
        row["test_error"] = 1.0 - row["test_acc"]
        row["diverged"] = bool(metrics["diverged"][i])
        row["diverged_epoch"] = int(metrics["diverged_epoch"][i])
        members.append(row)
    return {
        "members": members,
        "epochs": config.epochs,
        "wall_time_s": round(seconds, 3),
        "strategy": strategy,
        "backend": jax.default_backend(),
        "devices": jax.device_count(),
    }


__all__ = ["GridState", "SweepConfig", "load_sweep_data", "make_trainer", "run_sweep"]
