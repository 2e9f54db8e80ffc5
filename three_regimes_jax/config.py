"""The one config tree: every option of a run, its default, its flag and its check, once.

A run is described by a :class:`Config`, a tree of frozen dataclasses::

    Config
      model       ModelConfig       architecture (name, width, depth, hidden, ...)
      data        DataConfig        dataset, subset, label noise
      train       TrainConfig       the grid (elrs x seeds), epochs, batches, random walk
      measure     MeasureConfig     sharpness measurements
      checkpoint  CheckpointConfig  Orbax checkpoint schedule
      run         RunConfig         how the grid executes (vmap or map)
      finetune    FinetuneConfig    only for fine-tunes: source run, epoch, members

Every field declares its default, its command-line flag, its help text and
its constraints in one place (:func:`option`).  Values are checked when a
section is constructed, so an invalid tree cannot exist; each bad value gets
one :class:`~three_regimes_jax.errors.UserError` line naming the flag.  The
command line (``cli.py``) generates its flags from these declarations, and
``config.json`` is :meth:`Config.to_dict`, read back by
:meth:`Config.from_dict` (which also reads the flat ``config.json`` of results
written before this tree existed, ``format_version`` 1).

A new option is one field here (and, if the engine must act on it, the code
that reads it): its flag, default, validation, JSON form and its place in
experiment configs follow.

This module imports nothing from the rest of the package but ``errors``, so
every layer, plotting included, may read configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from three_regimes_jax.errors import UserError
from three_regimes_jax.options import Section, check_elrs, option

#: Version of the ``config.json`` layout written by :meth:`Config.to_dict`
#: (1: the flat layout of the first releases; 2: this tree).
CONFIG_VERSION = 2

# Names the engine registers; tests check that the registries match.
MODEL_NAMES = ("mlp_si", "convnet_si")
DATASET_NAMES = ("digits", "mnist", "cifar10", "cifar100")
STRATEGIES = ("auto", "vmap", "map")
DATA_KEYS = ("continue", "new")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
    """The architecture.

    Attributes:
      name: ``mlp_si`` (paper App. O) or ``convnet_si`` (App. C).
      width: ConvNetSI width ``k``.
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      init_scale: norm of the frozen last layer's weight (paper: 10).
      train_last_layer: train the last layer (a non-SI parameter) instead of
        freezing it.
    """

    name: str = option("mlp_si", "--model", "the architecture", "str", choices=MODEL_NAMES)
    width: int = option(32, "--width", "ConvNetSI width k", "int", low=1)
    depth: int = option(3, "--depth", "ConvNetSI depth", "int", low=1)
    hidden: tuple[int, ...] = option(
        (300, 100), "--hidden", "MLP-SI hidden widths", "ints", low=1, nonempty=True
    )
    init_scale: float = option(
        10.0, "--init-scale", "norm of the frozen last layer", "float", low=1e-30
    )
    train_last_layer: bool = option(
        False, "--train-last-layer", "train the last layer instead of freezing it", "bool"
    )


@dataclasses.dataclass(frozen=True)
class DataConfig(Section):
    """The dataset.

    Attributes:
      dataset: ``digits`` (embedded), ``mnist``, ``cifar10`` or ``cifar100``.
      data_dir: folder with the original files (else ``THREE_REGIMES_DATA_DIR``, then TFDS).
      use_data_size: train on the first N training examples only.
      label_noise: fraction of training labels replaced by uniformly random ones.
      noise_seed: seed of the label noise.
    """

    dataset: str = option("digits", "--dataset", "the dataset", "str", choices=DATASET_NAMES)
    data_dir: str | None = option(
        None, "--data-dir", "folder with the original files (or THREE_REGIMES_DATA_DIR)", "opt_str"
    )
    use_data_size: int | None = option(
        None, "--use-data-size", "train on the first N examples only", "opt_int", low=1
    )
    label_noise: float = option(
        0.0, "--label-noise", "fraction of noisy training labels", "float", low=0.0, high=1.0
    )
    noise_seed: int = option(0, "--noise-seed", "seed of the label noise", "int", low=0)


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
    """The grid and how it trains.

    The grid is ``elrs x seeds``, ELR-major: member ``i * len(seeds) + j`` has
    ELR ``elrs[i]`` and seed ``seeds[j]``.  A seed fixes a member's init and
    batch order; with one seed every member shares both, as in the paper.

    Attributes:
      elrs: effective learning rates, each > 0.
      seeds: seeds.
      epochs: epochs to train (a fine-tune: epochs after its source epoch).
      batch_size: mini-batch size (paper: 128).
      drop_last: drop each epoch's last partial batch (default keeps it, as PyTorch).
      random_walk: the random-walk baseline (App. M): random tangent directions
        of the real gradient's length replace the gradients.
    """

    elrs: tuple[float, ...] = option(
        (1e-3, 1e-2, 1e-1, 1.0),
        "--elrs",
        "comma-separated ELRs, e.g. 1e-4,1e-3,1e-2",
        "floats",
        positive=True,
        unique=True,
        nonempty=True,
    )
    seeds: tuple[int, ...] = option(
        (0,), "--seeds", "comma-separated seeds", "ints", unique=True, nonempty=True
    )
    epochs: int = option(10, "--epochs", "epochs to train", "int", low=1)
    batch_size: int = option(128, "--batch-size", "mini-batch size", "int", low=1)
    drop_last: bool = option(False, "--drop-last", "drop the last partial batch", "bool")
    random_walk: bool = option(
        False,
        "--random-walk",
        "random-walk baseline (App. M): random tangent steps of the gradient's length",
        "bool",
    )


@dataclasses.dataclass(frozen=True)
class MeasureConfig(Section):
    """Measurements beyond the per-epoch losses (App. B).

    Attributes:
      sharpness_every: measure sharpness every K epochs and at the last one (0: off).
      sharpness_size: the fixed training subset (the first examples).
      sharpness_probes: Hutchinson probes of the FIM and Hessian traces.
      sharpness_iters: Lanczos steps of the top eigenvalues.
    """

    sharpness_every: int = option(0, "--sharpness-every", "every K epochs (0: off)", "int", low=0)
    sharpness_size: int = option(2048, "--sharpness-size", "training subset size", "int", low=1)
    sharpness_probes: int = option(8, "--sharpness-probes", "Hutchinson probes", "int", low=1)
    sharpness_iters: int = option(20, "--sharpness-iters", "Lanczos iterations", "int", low=1)


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(Section):
    """When to save Orbax checkpoints of the whole grid.

    With any checkpointing on, the first and the last epoch are always saved.

    Attributes:
      epochs: these epochs (0 = the initial state).
      every: also every N epochs (0: off).
      log: also the paper's log-spaced schedule (every epoch below 20, every
        5th below 100, every 10th below 200, every 50th below 1000, ...).
    """

    epochs: tuple[int, ...] = option(
        (), "--checkpoint-epochs", "comma-separated epochs, e.g. 0,1,5", "ints", low=0
    )
    every: int = option(0, "--checkpoint-every", "every N epochs", "int", low=0)
    log: bool = option(False, "--checkpoint-log", "the paper's log-spaced schedule", "bool")

    @property
    def enabled(self) -> bool:
        """Whether any checkpoint is requested."""
        return bool(self.epochs or self.every or self.log)


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
    """How the grid executes (never changes the numbers beyond float rounding).

    Attributes:
      strategy: ``auto``, ``vmap`` or ``map`` (``engine.grid.choose_strategy``).
    """

    strategy: str = option("auto", "--strategy", "how members run", "str", choices=STRATEGIES)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig(Section):
    """Where a fine-tune starts: a checkpoint of a source run.

    Attributes:
      source: results directory of the source run (with checkpoints).
      epoch: the source checkpoint to start from (0: the initialisation).
      members: source ELRs to fine-tune (empty: every source member).
      data_key: batch order, ``continue`` (the source's) or ``new``.
    """

    source: str = option(
        "", "--from", "the source run's results directory", "str", nonempty=True, flat="source"
    )
    epoch: int = option(0, "--epoch", "source checkpoint epoch (default: the latest)", "int", low=0)
    members: tuple[float, ...] = option(
        (), "--members", "source ELRs to fine-tune (default: all)", "floats", positive=True
    )
    data_key: str = option(
        "continue", "--data-key", "batch order: continue or new", "str", choices=DATA_KEYS
    )


#: Flat names a fine-tune sets besides ``source`` and ``epoch``; every other field
#: is the source run's (its model, data, batch size, seeds, sharpness settings).
FINETUNE_OVERRIDES = (
    "elrs",
    "epochs",
    "sharpness_every",
    "checkpoint_every",
    "members",
    "data_key",
)

SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "measure": MeasureConfig,
    "checkpoint": CheckpointConfig,
    "run": RunConfig,
    "finetune": FinetuneConfig,
}


def fields_of(section: str) -> Iterator[dataclasses.Field]:
    """The fields of one section, in declaration order."""
    return iter(dataclasses.fields(SECTIONS[section]))


def flat_names() -> dict[str, tuple[str, str]]:
    """Flat name (e.g. ``checkpoint_every``) -> (section, field)."""
    out = {}
    for sec in SECTIONS:
        for f in fields_of(sec):
            out[f.metadata["flat"]] = (sec, f.name)
    return out


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole run: a sweep, or a fine-tune when ``finetune`` is set.

    Build it nested (``Config(train=TrainConfig(elrs=(1e-3,), epochs=5))``) or
    from flat names (``Config.from_flat(model="mlp_si", elrs=(1e-3,), epochs=5)``);
    derive one from another with :meth:`replace`.
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    measure: MeasureConfig = dataclasses.field(default_factory=MeasureConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    finetune: FinetuneConfig | None = None

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if value is None and name == "finetune":
                continue
            if not isinstance(value, cls):
                raise UserError(f"config.{name} must be a {cls.__name__}, got {value!r}")
        m, t = self.measure, self.train
        if m.sharpness_every and m.sharpness_size < t.batch_size:
            raise UserError(
                f"--sharpness-size ({m.sharpness_size}) must be >= --batch-size "
                f"({t.batch_size}): sharpness is measured on mini-batches of the training size"
            )
        first, last = self.start_epoch, self.end_epoch
        bad = [e for e in self.checkpoint.epochs if not first <= e <= last]
        if bad:
            raise UserError(
                f"checkpoint epoch {bad[0]} is outside the run's epochs; give epochs "
                f"between {first} and {last} in --checkpoint-epochs"
            )

    # ------------------------------------------------------------------ derived values

    @property
    def kind(self) -> str:
        """``"finetune"`` or ``"sweep"``."""
        return "finetune" if self.finetune is not None else "sweep"

    @property
    def start_epoch(self) -> int:
        """Epochs done before this run starts (a fine-tune's source epoch)."""
        return self.finetune.epoch if self.finetune is not None else 0

    @property
    def end_epoch(self) -> int:
        """The epoch number after the run's last epoch."""
        return self.start_epoch + self.train.epochs

    @property
    def member_elrs(self) -> list[float]:
        """ELR of each member of a sweep (length G, ELR-major)."""
        return [e for e in self.train.elrs for _ in self.train.seeds]

    @property
    def member_seeds(self) -> list[int]:
        """Seed of each member of a sweep (length G)."""
        return [s for _ in self.train.elrs for s in self.train.seeds]

    # ------------------------------------------------------------------ building

    def replace(self, **flat: Any) -> Config:
        """A copy with fields overridden by flat name (``elrs=...``, ``checkpoint_every=...``).

        Setting any ``finetune`` field (``source``, ``epoch``, ``members``,
        ``data_key``) on a sweep makes it a fine-tune.
        """
        names = flat_names()
        unknown = sorted(set(flat) - set(names))
        if unknown:
            raise UserError(f"unknown config field(s): {', '.join(unknown)}")
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in flat.items():
            sec, name = names[key]
            by_section.setdefault(sec, {})[name] = value
        updates = {}
        for sec, values in by_section.items():
            current = getattr(self, sec)
            base = current.to_dict() if current is not None else {}
            updates[sec] = SECTIONS[sec](**{**base, **values})
        return dataclasses.replace(self, **updates)

    @classmethod
    def from_flat(cls, **flat: Any) -> Config:
        """A config from flat names, e.g. ``Config.from_flat(model="convnet_si", elrs=(1e-3,))``."""
        return cls().replace(**flat)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form: one object per section, plus ``kind`` and version."""
        d: dict[str, Any] = {"kind": self.kind, "format_version": CONFIG_VERSION}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None:
                d[name] = section.to_dict()
        return d

    def to_flat(self) -> dict[str, Any]:
        """Flat name -> value for every field (fine-tune fields only for fine-tunes)."""
        out = {}
        for flat, (sec, name) in flat_names().items():
            section = getattr(self, sec)
            if section is not None:
                out[flat] = getattr(section, name)
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Config:
        """Reads :meth:`to_dict` output, and the flat ``config.json`` of format 1.

        Raises:
          UserError: not a config, an unknown key or a bad value (one line).
        """
        if not isinstance(d, Mapping):
            raise UserError(f"a config must be a JSON object, got {type(d).__name__}")
        version = d.get("format_version", 1)
        if version == 1 or not any(isinstance(d.get(s), Mapping) for s in SECTIONS):
            return _from_v1(d)
        if version != CONFIG_VERSION:
            raise UserError(
                f"config format_version {version} is newer than this installation's "
                f"({CONFIG_VERSION}); upgrade three_regimes_jax"
            )
        unknown = sorted(set(d) - set(SECTIONS) - {"kind", "format_version"})
        if unknown:
            raise UserError(f"config: unknown section(s) {', '.join(unknown)}")
        sections = {
            name: SECTIONS[name].from_dict(d[name], f"config.{name}")
            for name in SECTIONS
            if d.get(name) is not None
        }
        return cls(**sections)


# Flat keys of format-1 sweep configs that are not fields (written for information).
_V1_EXTRA = {"kind", "format_version"}
# Format-1 fine-tune keys -> flat names.
_V1_FINETUNE = {
    "source": "source",
    "epoch": "epoch",
    "elrs": "elrs",
    "epochs": "epochs",
    "members": "members",
    "data_key": "data_key",
    "sharpness_every": "sharpness_every",
    "checkpoint_every": "checkpoint_every",
}


def _from_v1(d: Mapping[str, Any]) -> Config:
    """A format-1 (flat) sweep or fine-tune config."""
    if not d:
        raise UserError("the config is empty")
    if d.get("kind") == "finetune":
        base = _from_v1(d.get("source_config") or {})
        flat = {_V1_FINETUNE[k]: v for k, v in d.items() if k in _V1_FINETUNE}
        return base.replace(checkpoint_epochs=(), checkpoint_log=False, **flat)
    names = flat_names()
    flat = {k: v for k, v in d.items() if k not in _V1_EXTRA}
    unknown = sorted(k for k in flat if k not in names or names[k][0] == "finetune")
    if unknown:
        raise UserError(f"config: unknown key(s) {', '.join(unknown)}")
    return Config.from_flat(**flat)


__all__ = [
    "CONFIG_VERSION",
    "DATASET_NAMES",
    "DATA_KEYS",
    "FINETUNE_OVERRIDES",
    "MODEL_NAMES",
    "SECTIONS",
    "STRATEGIES",
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "FinetuneConfig",
    "MeasureConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "check_elrs",
    "fields_of",
    "flat_names",
    "option",
]
