"""The steps of an experiment: their kinds and keys, checks, command lines, and how each runs.

A step is a JSON object whose ``run`` names its kind; its other keys are the
arguments of one ``three-regimes`` command (optional ones in brackets):

- ``sweep``: ``config`` (a config tree), ``out``;
- ``finetune``: ``from``, [``epoch``] (default: the latest checkpoint),
  ``overrides`` (flat names; ``elrs`` and ``epochs`` required), ``out``;
- ``interpolate``: ``a``, [``b``, ``pairs``, ``points``, ``recompute_bn``], ``out``;
- ``toy``: ``alphas``, ``elrs``, [``steps``, ``seed``, ``starts``], ``out``;
- ``regimes``: ``dir``, [``random_walk``];
- ``plot``: ``paths``, [``kind``, ``out``, ``member``];
- ``find-transitions``: ``config``, ``elr_range``, [``rounds``, ``points``], ``out``.

A config tree is the nested form of :class:`~three_regimes_jax.config.Config`
(``{"model": {"name": "convnet_si"}, "train": {"elrs": [0.001], "epochs": 5}}``)
holding only the fields that differ from the defaults (or that a reader should
see); every other field takes its default.  Fine-tune ``overrides`` use the
flat names (the command line's flags with ``_``) and apply to the source run's
config, as :func:`~three_regimes_jax.studies.finetune.finetune_config` does.

:func:`validate_step` checks a step's shape when its experiment is loaded,
:func:`check_step` its values (building its config) before an experiment runs,
:func:`~experiments.commands.format_step` renders the equivalent command line and
:func:`run_step`
runs it by calling the studies, analysis and plotting functions directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

from three_regimes_jax.config import (
    CONFIG_VERSION,
    FINETUNE_OVERRIDES,
    WHOLE_ONLY,
    Config,
    fields_of,
)
from three_regimes_jax.errors import UserError

#: Placeholders a step's strings may use.
PLACEHOLDERS = ("out", "data")
PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
PROG = "three-regimes"

_FINETUNE_REQUIRED = ("elrs", "epochs")


class Key(NamedTuple):
    """One key of a step: its JSON type, its command-line flag and its default.

    ``kind`` is ``str``, ``int``, ``bool``, ``floats`` or ``strs`` (non-empty
    lists), ``tree`` (a config tree) or ``flat`` (flat config names); ``flag``
    None renders the value as a positional argument.
    """

    name: str
    kind: str
    flag: str | None
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    low: int | None = None


class Kind(NamedTuple):
    """A step kind: its keys (in command-line order), how it runs, its config sections."""

    keys: tuple[Key, ...]
    run: Callable[[dict[str, Any]], None]
    sections: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()  # flat names a config tree may not set
    required: tuple[str, ...] = ()  # flat names always on the command line


def _out(required: bool = True) -> Key:
    return Key("out", "str", "--out", required)


def config_of(step: dict[str, Any]) -> Config:
    """The :class:`Config` of a step's config tree (defaults for what it omits)."""
    return Config.from_dict({"kind": "sweep", "format_version": CONFIG_VERSION, **step["config"]})


def _args(step: dict[str, Any]) -> dict[str, Any]:
    """The step's arguments with the defaults of the keys it omits."""
    return {k.name: step.get(k.name, k.default) for k in KINDS[step["run"]].keys}


# --------------------------------------------------------------------------- running


def _run_sweep(step: dict[str, Any]) -> None:
    from three_regimes_jax.studies.sweep import run_sweep

    res = run_sweep(config_of(step), out=step["out"], progress=True)
    print(res.table())


def _finetune_config(step: dict[str, Any]) -> Config:
    from three_regimes_jax.studies.finetune import finetune_config

    return finetune_config(step["from"], epoch=step.get("epoch"), **step["overrides"])


def _run_finetune(step: dict[str, Any]) -> None:
    from three_regimes_jax.studies.finetune import run_finetune

    res = run_finetune(_finetune_config(step), out=step["out"], progress=True)
    print(res.table())


def _run_interpolate(step: dict[str, Any]) -> None:
    from three_regimes_jax.studies.connectivity import run_interpolate

    a = _args(step)
    res = run_interpolate(
        a["a"],
        a["b"] or a["a"],
        a["out"],
        pairs=a["pairs"],
        points=a["points"],
        recompute_bn=a["recompute_bn"],
    )
    barriers = ", ".join(f"{b:.4g}" for b in res["barrier"])
    print(f"barriers {barriers}; written to {a['out']}")


def _run_toy(step: dict[str, Any]) -> None:
    from plotting.toy import write_toy_figures
    from three_regimes_jax.studies.toy_report import run_toy_command

    a = _args(step)
    run_toy_command(a["alphas"], a["elrs"], a["steps"], a["seed"], a["starts"], a["out"])
    for path in write_toy_figures(a["out"]):
        print(path)


def _run_regimes(step: dict[str, Any]) -> None:
    from three_regimes_jax.analysis.report import run_regimes_command

    _, table = run_regimes_command(step["dir"], random_walk=step.get("random_walk"))
    print(table)


def _run_plot(step: dict[str, Any]) -> None:
    from plotting import run_plot

    a = _args(step)
    for path in run_plot(a["paths"], kind=a["kind"], out=a["out"], member=a["member"]):
        print(path)


def _transitions_config(step: dict[str, Any]) -> Config:
    from three_regimes_jax.studies.search import validate_elr_range

    lo, _ = validate_elr_range(step["elr_range"])
    return config_of(step).replace(elrs=(lo,))


def _run_find_transitions(step: dict[str, Any]) -> None:
    from three_regimes_jax.studies.transitions import (
        format_transitions,
        run_find_transitions_command,
    )

    a = _args(step)
    base = _transitions_config(step)
    report = run_find_transitions_command(
        base, a["elr_range"], a["rounds"], a["points"], base.train.epochs, a["out"], progress=True
    )
    print(format_transitions(report))


KINDS: dict[str, Kind] = {
    "sweep": Kind(
        (Key("config", "tree", None, True), _out()),
        _run_sweep,
        sections=("model", "data", "train", "measure", "checkpoint", "run"),
        required=("elrs", "epochs"),
    ),
    "finetune": Kind(
        (
            Key("from", "str", "--from", True),
            Key("epoch", "int", "--epoch", low=0),
            Key("overrides", "flat", None, True),
            _out(),
        ),
        _run_finetune,
    ),
    "interpolate": Kind(
        (
            Key("a", "str", "--a", True),
            Key("b", "str", "--b"),
            Key("pairs", "str", "--pairs", default="neighbors", choices=("neighbors", "all")),
            Key("points", "int", "--points", default=21, low=2),
            Key("recompute_bn", "bool", "--recompute-bn", default=False),
            _out(),
        ),
        _run_interpolate,
    ),
    "toy": Kind(
        (
            Key("alphas", "floats", "--alphas", True),
            Key("elrs", "floats", "--elrs", True),
            Key("steps", "int", "--steps", default=2000, low=1),
            Key("seed", "int", "--seed", default=0, low=0),
            Key("starts", "int", "--starts", default=1, low=1),
            _out(),
        ),
        _run_toy,
    ),
    "regimes": Kind(
        (Key("dir", "str", None, True), Key("random_walk", "str", "--random-walk")),
        _run_regimes,
    ),
    "plot": Kind(
        (
            Key("paths", "strs", None, True),
            Key("kind", "str", "--kind", default="all"),
            _out(required=False),
            Key("member", "str", "--member"),
        ),
        _run_plot,
    ),
    "find-transitions": Kind(
        (
            Key("config", "tree", None, True),
            Key("elr_range", "floats", "--elr-range", True),
            Key("rounds", "int", "--rounds", default=3, low=1),
            Key("points", "int", "--points", default=8, low=2),
            _out(),
        ),
        _run_find_transitions,
        sections=("model", "data", "train", "run"),
        excluded=("elrs", "random_walk", "train_mode", *WHOLE_ONLY),
        required=("epochs",),
    ),
}


# --------------------------------------------------------------------------- checks


def strings(value: Any):
    """Every string inside a step's values (nested lists and objects), in order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "floats": (
        lambda v: isinstance(v, list) and bool(v) and all(map(_is_number, v)),
        "a non-empty list of numbers",
    ),
    "strs": (
        lambda v: isinstance(v, list) and bool(v) and all(isinstance(s, str) for s in v),
        "a non-empty list of strings",
    ),
    "tree": (lambda v: isinstance(v, dict), "an object (a config tree)"),
    "flat": (lambda v: isinstance(v, dict), "an object of flat config names"),
}


def validate_step(step: Any, where: str) -> None:
    """Checks a step's shape: its kind, keys, their JSON types and its placeholders.

    Values are checked by :func:`check_step` when the experiment runs.

    Raises:
      UserError: one line starting with ``where``.
    """
    if not isinstance(step, dict):
        raise UserError(f"{where}: a step must be an object with a 'run' key")
    run = step.get("run")
    kind = KINDS.get(run) if isinstance(run, str) else None
    if kind is None:
        raise UserError(f"{where}: unknown step kind {run!r}; use one of {', '.join(KINDS)}")
    where = f"{where} ({step['run']})"
    known = {k.name: k for k in kind.keys}
    unknown = sorted(set(step) - set(known) - {"run"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for key in kind.keys:
        if key.name not in step:
            if key.required:
                raise UserError(f"{where}: missing key {key.name!r}")
            continue
        value = step[key.name]
        ok, what = _TYPES[key.kind]
        if not ok(value):
            raise UserError(f"{where}: {key.name} must be {what}, got {value!r}")
        if key.choices and value not in key.choices:
            raise UserError(f"{where}: {key.name} must be one of {', '.join(key.choices)}")
        if key.low is not None and value < key.low:
            raise UserError(f"{where}: {key.name} must be >= {key.low}, got {value}")
    if "config" in step:
        _validate_tree(step["config"], kind, where)
    if "overrides" in step:
        _validate_overrides(step["overrides"], where)
    for s in strings(step):
        for ph in PLACEHOLDER_RE.findall(s):
            if ph not in PLACEHOLDERS:
                raise UserError(
                    f"{where}: unknown placeholder {{{ph}}} in {s!r}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )


def _validate_tree(tree: dict[str, Any], kind: Kind, where: str) -> None:
    for section, fields in tree.items():
        if section not in kind.sections:
            raise UserError(
                f"{where}: config section {section!r} is not allowed here; "
                f"use {', '.join(kind.sections)}"
            )
        if not isinstance(fields, dict):
            raise UserError(f"{where}: config.{section} must be an object, got {fields!r}")
        names = [f.name for f in fields_of(section) if f.metadata["flat"] not in kind.excluded]
        unknown = sorted(set(fields) - set(names))
        if unknown:
            raise UserError(
                f"{where}: config.{section}: unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(names)}"
            )


def _validate_overrides(overrides: dict[str, Any], where: str) -> None:
    unknown = sorted(set(overrides) - set(FINETUNE_OVERRIDES))
    if unknown:
        raise UserError(
            f"{where}: overrides: unknown or fixed field(s) {', '.join(unknown)}; "
            f"a fine-tune may set: {', '.join(FINETUNE_OVERRIDES)}"
        )
    missing = [k for k in _FINETUNE_REQUIRED if k not in overrides]
    if missing:
        raise UserError(f"{where}: overrides must set {', '.join(missing)}")


def check_step(step: dict[str, Any]) -> None:
    """Checks a (validated, substituted) step's values without running it.

    Builds its config (sweep, find-transitions; a fine-tune's overrides over the
    defaults) and checks the toy's and the plot's arguments.

    Raises:
      UserError: the first bad value, in one line.
    """
    run = step["run"]
    if run == "sweep":
        config_of(step)
    elif run == "find-transitions":
        _transitions_config(step)
    elif run == "finetune":
        Config.from_flat(source=step["from"], epoch=step.get("epoch", 0), **step["overrides"])
    elif run == "toy":
        from three_regimes_jax.studies.toy import validate_run_args

        a = _args(step)
        validate_run_args(a["alphas"], a["elrs"], a["steps"], a["seed"], a["starts"])
    elif run == "plot":
        from plotting.run import KINDS as PLOT_KINDS

        kind = _args(step)["kind"]
        if kind != "all" and kind not in PLOT_KINDS:
            raise UserError(f"kind must be one of {', '.join(PLOT_KINDS)} or all, got {kind!r}")


def run_step(step: dict[str, Any]) -> None:
    """Runs one validated, checked and substituted step.

    Raises:
      UserError: from the study, analysis or plotting function it calls.
    """
    KINDS[step["run"]].run(step)
