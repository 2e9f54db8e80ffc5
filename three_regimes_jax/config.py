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

This module (with ``sections`` and ``options``) imports nothing else from the package but
``errors``, so
every layer, plotting included, may read configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from three_regimes_jax.errors import UserError
from three_regimes_jax.options import check_elrs, option

#: Version of the ``config.json`` layout written by :meth:`Config.to_dict`
#: (1: the flat layout of the first releases; 2: this tree).
CONFIG_VERSION = 2

from three_regimes_jax.sections import (  # noqa: E402 (re-exported: the tree's parts)
    DATA_KEYS,
    DATASET_NAMES,
    DEFAULT_ELRS,
    DEFAULT_WIDTH,
    GRIDS,
    MODEL_NAMES,
    PRECISIONS,
    SCHEDULES,
    STRATEGIES,
    TRAIN_MODES,
    WHOLE_ONLY,
    CheckpointConfig,
    DataConfig,
    FinetuneConfig,
    MeasureConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from three_regimes_jax.sections_run import shard_of  # noqa: E402

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
        if t.grid == "zip" and len(t.elrs) != len(t.seeds):
            raise UserError(
                f"--grid zip pairs ELR i with seed i: give as many seeds as ELRs "
                f"(got {len(t.elrs)} ELRs, {len(t.seeds)} seeds)"
            )
        steps = m.filter_log_steps
        if steps and (len(steps) != 2 or steps[0] >= steps[1] or not m.filter_groups):
            raise UserError(
                "--filter-log-steps takes START,END with START < END and needs --filter-groups, "
                f"got {','.join(map(str, steps))}"
            )
        md, d = self.model, self.data
        if (md.name == "transformer") != (d.dataset == "ag_news"):
            raise UserError(
                "--model transformer and --dataset ag_news go together (a text model for a "
                f"text dataset), got --model {md.name} with --dataset {d.dataset}"
            )
        if md.name == "transformer" and md.d_model % md.heads:
            raise UserError(
                f"--heads ({md.heads}) must divide --d-model ({md.d_model}) for the Transformer"
            )
        if d.split_test is not None and d.dataset != "ag_news":
            raise UserError("--split-test applies to --dataset ag_news only")
        if t.augment and d.dataset in ("ag_news", "digits"):
            raise UserError(
                f"--augment (random crop 32 with padding 4, horizontal flip) is for CIFAR "
                f"(or MNIST padded to 32 x 32) images, not --dataset {d.dataset}"
            )
        if t.random_walk_from is not None and not t.random_walk:
            raise UserError("--random-walk-from needs --random-walk")
        if m.sharpness_every and 0 < m.sharpness_size < t.batch_size:
            raise UserError(
                f"--sharpness-size ({m.sharpness_size}) must be >= --batch-size "
                f"({t.batch_size}): sharpness is measured on mini-batches of the training size"
            )
        if self.finetune is not None and t.elr_schedules != ("constant",):
            raise UserError(
                "fine-tuning continues at fixed ELRs: the source run has --elr-schedules"
            )
        if self.shard is not None:
            n, g = self.shard[1], len(self._all_members())
            if self.finetune is not None:
                raise UserError("--shard applies to sweeps; fine-tune a merged run instead")
            if n > g:
                raise UserError(
                    f"--shard {self.run.shard}: the grid has {g} member(s), so N can be at most {g}"
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
    def whole(self) -> bool:
        """Whether the run trains in the whole parameter space (``train.mode == "whole"``)."""
        return self.train.mode == "whole"

    def _all_members(self) -> list[tuple[float, float, int, str]]:
        """``(elr or lr, weight decay, seed, ELR schedule)`` of each member of the whole grid.

        In order: schedules outermost (one schedule: the plain grid), then ELRs
        (or LRs and weight decays), then seeds.
        """
        t = self.train
        if self.whole:
            return [
                (lr, wd, s, "constant") for lr in t.lrs for wd in t.weight_decays for s in t.seeds
            ]
        if t.grid == "zip":
            pairs = list(zip(t.elrs, t.seeds, strict=True))
        else:
            pairs = [(e, s) for e in t.elrs for s in t.seeds]
        return [(e, 0.0, s, sched) for sched in t.elr_schedules for e, s in pairs]

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(K, N)`` of ``run.shard``, or None for the whole grid."""
        return shard_of(self.run.shard)

    @property
    def shard_range(self) -> tuple[int, int]:
        """Members ``[start, stop)`` of the whole grid that this run trains."""
        g = len(self._all_members())
        if self.shard is None:
            return 0, g
        k, n = self.shard
        return k * g // n, (k + 1) * g // n

    def _members(self) -> list[tuple[float, float, int, str]]:
        """:meth:`_all_members` of the members this run trains (its shard)."""
        start, stop = self.shard_range
        return self._all_members()[start:stop]

    @property
    def grid_size(self) -> int:
        """Number of members G of a sweep."""
        return len(self._members())

    @property
    def member_elrs(self) -> list[float]:
        """ELR of each member of a sweep on the sphere (ELR-major for the product grid).

        Whole-space runs have no fixed ELR: this is their (initial) LR, see
        :attr:`member_lrs`.
        """
        return [m[0] for m in self._members()]

    @property
    def member_lrs(self) -> list[float]:
        """Initial LR of each member of a whole-space sweep (LR-major; empty on the sphere)."""
        return [m[0] for m in self._members()] if self.whole else []

    @property
    def member_weight_decays(self) -> list[float]:
        """Weight decay of each member of a sweep (LR-major; 0 on the sphere)."""
        return [m[1] for m in self._members()]

    @property
    def member_hypers(self) -> list[dict[str, float]]:
        """Each member's optimizer hyperparameters.

        ``{"elr"}`` (and ``"schedule"`` with :attr:`scheduled`) on the sphere,
        ``{"lr", "weight_decay"}`` in the whole space.
        """
        if self.whole:
            return [{"lr": m[0], "weight_decay": m[1]} for m in self._members()]
        if self.scheduled:
            return [{"elr": m[0], "schedule": m[3]} for m in self._members()]
        return [{"elr": m[0]} for m in self._members()]

    @property
    def scheduled(self) -> bool:
        """Whether members have ELR schedules (``--elr-schedules`` other than constant)."""
        return self.train.elr_schedules != ("constant",)

    @property
    def member_schedules(self) -> list[str]:
        """ELR schedule of each member of a sweep (length G)."""
        return [m[3] for m in self._members()]

    @property
    def member_seeds(self) -> list[int]:
        """Seed of each member of a sweep (length G)."""
        return [m[2] for m in self._members()]

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
            merged = {**base, **values}
            if sec == "train":
                _no_elrs_in_whole(merged, given="elrs" in values)
            updates[sec] = SECTIONS[sec](**merged)
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
        unknown = sorted(set(d) - set(SECTIONS) - {"kind", "format_version", "results_format"})
        if unknown:
            raise UserError(f"config: unknown section(s) {', '.join(unknown)}")
        if isinstance(d.get("train"), Mapping):
            _no_elrs_in_whole(d["train"], given=True)
        sections = {
            name: SECTIONS[name].from_dict(d[name], f"config.{name}")
            for name in SECTIONS
            if d.get(name) is not None
        }
        return cls(**sections)


def _no_elrs_in_whole(train: Mapping[str, Any], *, given: bool) -> None:
    """Refuses ELRs given explicitly to a whole-space run (even the default list).

    ``TrainConfig`` drops the default ELRs of a whole-space run, so it cannot
    tell them from ELRs a user wrote; callers that can tell check here.
    """
    if given and train.get("mode") == "whole" and train.get("elrs"):
        raise UserError("--elrs applies to --train sphere only; --train whole sweeps --lrs")


# Flat keys of format-1 sweep configs that are not fields (written for information).
_V1_EXTRA = {"kind", "format_version", "results_format"}
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
    "DEFAULT_ELRS",
    "DEFAULT_WIDTH",
    "SCHEDULES",
    "TRAIN_MODES",
    "WHOLE_ONLY",
    "DATASET_NAMES",
    "DATA_KEYS",
    "GRIDS",
    "PRECISIONS",
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
