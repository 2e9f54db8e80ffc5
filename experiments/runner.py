"""The experiment catalog: one JSON config per paper figure, listed, validated and run.

A config (``experiments/configs/figNN.json``) describes how to reproduce one
figure of Kodryan et al. (NeurIPS 2022) with the ``three-regimes`` command line.
A figure that is ready has two variants: ``paper`` (the paper's model, data,
ELR grid and epochs, for a GPU) and ``quick`` (a few minutes on a 2-core CPU,
on real data, showing the same qualitative effect).  Each variant is a list of
steps; a step is the argument list of one ``three-regimes`` call, without the
program name, e.g. ``["sweep", "--elrs", "1e-3,1e-2", "--epochs", "5", "--out",
"{out}/sweep"]``.

Placeholders in a step's arguments:

- ``{out}``: the experiment's output directory (default ``runs/<name>-<variant>``);
- ``{data}``: the data root: ``$THREE_REGIMES_DATA_DIR`` if set, else
  ``../shared/data`` relative to the repository, resolved when the experiment runs.

Steps run in-process through :func:`three_regimes_jax.cli.main`.  Before
anything runs, every step is checked with the command line's argument parser
and every path that uses ``{data}`` must exist, so a typo, a subcommand this
installation lacks or missing data fails at once with one line, not after an
hour of training.  A step with a non-zero exit code stops the experiment with a
:class:`~three_regimes_jax.errors.UserError` that names it.

Figures that are not about training on the sphere (standard training with
weight decay) are listed with ``"status": "pending"`` and cannot be run yet.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from three_regimes_jax.errors import UserError

#: Subcommands a step may start with (some are wired into the CLI later).
KNOWN_SUBCOMMANDS = (
    "sweep",
    "finetune",
    "interpolate",
    "toy",
    "plot",
    "regimes",
    "find-transitions",
    "experiment",
)
#: Placeholders a step may use.
PLACEHOLDERS = ("out", "data")
VARIANTS = ("paper", "quick")
STATUSES = ("ready", "pending")

_READY_KEYS = ("figure", "title", "shows", "paper_setup", "variants", "expected", "notes")
_PENDING_KEYS = ("figure", "title", "shows", "status", "notes")
_VARIANT_KEYS = {
    "paper": ("steps", "estimated_time", "estimate_basis"),
    "quick": ("steps", "measured_time_s", "measured_on"),
}
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_NAME_RE = re.compile(r"^(?:fig(?:ure)?\.?\s*)?0*(\d+)$", re.IGNORECASE)
DATA_ENV = "THREE_REGIMES_DATA_DIR"


def _config_files() -> dict[str, Any]:
    """Experiment name -> config resource (``fig1`` -> ``configs/fig01.json``)."""
    files = {}
    for entry in resources.files("experiments").joinpath("configs").iterdir():
        m = re.fullmatch(r"fig(\d+)\.json", entry.name)
        if m:
            files[f"fig{int(m.group(1))}"] = entry
    return dict(sorted(files.items(), key=lambda kv: int(kv[0][3:])))


def experiment_names() -> list[str]:
    """All experiment names in figure order (``fig1``, ``fig2``, ...), pending ones too."""
    return list(_config_files())


def canonical_name(name: str) -> str:
    """Maps ``fig1``, ``Fig01``, ``figure1`` or ``1`` to ``fig1``.

    Raises:
      UserError: no such experiment; the message lists the known names.
    """
    m = _NAME_RE.match(str(name).strip())
    canon = f"fig{int(m.group(1))}" if m else str(name)
    names = experiment_names()
    if canon not in names:
        raise UserError(
            f"unknown experiment {name!r}; known experiments: {', '.join(names)} "
            "(see `three-regimes experiment --list`)"
        )
    return canon


def list_experiments() -> list[dict[str, Any]]:
    """One row per experiment, in figure order.

    Returns:
      A list of dicts with ``name`` (``"fig1"``), ``figure`` (``"1"``), ``title``,
      ``shows`` (one sentence), ``status`` (``"ready"`` or ``"pending"``),
      ``verified`` (whether the figure's content was checked against the paper's
      text) and ``quick_time_s`` (measured time of the quick variant, or None).
    """
    rows = []
    for name in experiment_names():
        cfg = load_experiment(name)
        quick = cfg.get("variants", {}).get("quick", {})
        rows.append(
            {
                "name": name,
                "figure": cfg["figure"],
                "title": cfg["title"],
                "shows": cfg["shows"],
                "status": cfg["status"],
                "verified": cfg.get("verified", False),
                "quick_time_s": quick.get("measured_time_s"),
            }
        )
    return rows


def load_experiment(name: str) -> dict[str, Any]:
    """The validated config of one experiment (a fresh copy; ``status`` filled in).

    Args:
      name: ``fig1``, ``1``, ``Fig01`` ...

    Raises:
      UserError: unknown name, unreadable JSON or an invalid config.
    """
    canon = canonical_name(name)
    entry = _config_files()[canon]
    try:
        cfg = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"experiment {canon}: cannot read {entry.name}: {e}") from None
    cfg.setdefault("status", "ready")
    validate_config(cfg, canon)
    return copy.deepcopy(cfg)


def validate_config(cfg: dict[str, Any], name: str = "config") -> None:
    """Checks a config's keys, variants and steps.

    Every step must be a non-empty list of strings whose first word is one of
    :data:`KNOWN_SUBCOMMANDS` and whose placeholders are in :data:`PLACEHOLDERS`.

    Raises:
      UserError: one line naming the experiment and what is wrong.
    """
    if not isinstance(cfg, dict):
        raise UserError(f"experiment {name}: the config must be a JSON object")
    status = cfg.get("status", "ready")
    if status not in STATUSES:
        raise UserError(f"experiment {name}: status must be one of {STATUSES}, got {status!r}")
    required = _PENDING_KEYS if status == "pending" else _READY_KEYS
    missing = [k for k in required if k not in cfg]
    if missing:
        raise UserError(f"experiment {name}: missing keys {', '.join(missing)}")
    if f"fig{cfg['figure']}" != name and name != "config":
        raise UserError(f"experiment {name}: its figure field says {cfg['figure']!r}")
    if status == "pending":
        return
    variants = cfg["variants"]
    if not isinstance(variants, dict) or set(variants) != set(VARIANTS):
        raise UserError(f"experiment {name}: variants must be exactly {', '.join(VARIANTS)}")
    for variant, keys in _VARIANT_KEYS.items():
        spec = variants[variant]
        missing = [k for k in keys if k not in spec]
        if missing:
            raise UserError(f"experiment {name} ({variant}): missing keys {', '.join(missing)}")
        steps = spec["steps"]
        if not isinstance(steps, list) or not steps:
            raise UserError(f"experiment {name} ({variant}): steps must be a non-empty list")
        for i, step in enumerate(steps, 1):
            _validate_step(step, f"experiment {name} ({variant}) step {i}")
    t = variants["quick"]["measured_time_s"]
    if t is not None and not (isinstance(t, int | float) and t >= 0):
        raise UserError(f"experiment {name} (quick): measured_time_s must be a number >= 0")


def _validate_step(step: Any, where: str) -> None:
    if not (isinstance(step, list) and step and all(isinstance(a, str) for a in step)):
        raise UserError(f"{where}: a step must be a non-empty list of strings")
    if step[0] not in KNOWN_SUBCOMMANDS:
        raise UserError(
            f"{where}: unknown subcommand {step[0]!r}; use one of {', '.join(KNOWN_SUBCOMMANDS)}"
        )
    for arg in step:
        for ph in _PLACEHOLDER_RE.findall(arg):
            if ph not in PLACEHOLDERS:
                raise UserError(
                    f"{where}: unknown placeholder {{{ph}}} in {arg!r}; "
                    f"known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                )


def data_root() -> Path:
    """The data root: ``$THREE_REGIMES_DATA_DIR``, else ``../shared/data`` beside the repo."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[1]
    return repo.parent / "shared" / "data"


def substitute(step: list[str], out: str | os.PathLike, data: str | os.PathLike) -> list[str]:
    """Replaces ``{out}`` and ``{data}`` in every argument of a step."""
    values = {"out": str(out), "data": str(data)}
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], a) for a in step]


def format_step(argv: list[str]) -> str:
    """A step as a shell command line (``three-regimes sweep ...``)."""
    return "three-regimes " + shlex.join(argv)


def registered_subcommands() -> set[str]:
    """Subcommands the installed ``three-regimes`` command line knows."""
    import argparse

    from three_regimes_jax.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse keeps subparsers here, no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


def run_experiment(
    name: str,
    variant: str = "quick",
    out: str | os.PathLike | None = None,
    dry_run: bool = False,
    *,
    skip_unregistered: bool = False,
) -> list[list[str]]:
    """Runs an experiment's steps in order (or, with ``dry_run``, only returns them).

    Args:
      name: experiment name (``fig1``, ``1``, ...).
      variant: ``quick`` (default) or ``paper``.
      out: output directory (default ``runs/<name>-<variant>``).
      dry_run: return the substituted steps without checking data or running.
      skip_unregistered: leave out steps whose subcommand the installed CLI does
        not have yet (e.g. ``plot`` before it is wired) instead of refusing.

    Returns:
      The argument lists of the steps (substituted), in order: those run, or
      with ``dry_run`` those that would run.

    Raises:
      UserError: unknown name or variant, a pending figure, a step the CLI
        rejects, missing data, or a step that exits non-zero (named in the message).
    """
    canon = canonical_name(name)
    cfg = load_experiment(canon)
    if cfg["status"] == "pending":
        raise UserError(f"experiment {canon} is pending: {cfg['notes']}")
    if variant not in VARIANTS:
        raise UserError(
            f"unknown variant {variant!r} for {canon}; use one of {', '.join(VARIANTS)}"
        )
    out = Path(out) if out is not None else Path("runs") / f"{canon}-{variant}"
    raw = cfg["variants"][variant]["steps"]
    data = data_root()
    steps = [substitute(s, out, data) for s in raw]
    if dry_run:
        return steps
    label = f"{canon} ({variant})"
    if skip_unregistered:
        have = registered_subcommands()
        kept = [(r, s) for r, s in zip(raw, steps, strict=True) if s[0] in have]
        raw, steps = [r for r, _ in kept], [s for _, s in kept]
    _check_steps(steps, label)
    _check_data(raw, steps, label, data)
    from three_regimes_jax.cli import main

    out.mkdir(parents=True, exist_ok=True)
    for i, argv in enumerate(steps, 1):
        print(f"[{label} {i}/{len(steps)}] {format_step(argv)}", flush=True)
        rc = main(argv)
        if rc != 0:
            raise UserError(
                f"{label}: step {i}/{len(steps)} failed (exit code {rc}): {format_step(argv)}"
            )
    return steps


def _check_steps(steps: list[list[str]], label: str) -> None:
    """Parses every step with the CLI's parser before anything runs."""
    from three_regimes_jax.cli import build_parser

    have = registered_subcommands()
    for i, argv in enumerate(steps, 1):
        where = f"{label}: step {i}/{len(steps)} ({format_step(argv)})"
        if argv[0] not in have:
            raise UserError(
                f"{where} needs the `{argv[0]}` subcommand, which this installation of "
                "three-regimes does not have yet; nothing was run"
            )
        try:
            build_parser().parse_args(argv)
        except UserError as e:
            raise UserError(f"{where} is invalid: {e}; nothing was run") from None


def _check_data(raw: list[list[str]], steps: list[list[str]], label: str, data: Path) -> None:
    """Every argument that uses ``{data}`` must name an existing path."""
    for r_step, s_step in zip(raw, steps, strict=True):
        for r, s in zip(r_step, s_step, strict=True):
            if "{data}" in r and not Path(s).exists():
                raise UserError(
                    f"{label} needs data at {s}, which is missing; put it there or set "
                    f"{DATA_ENV} to the folder that holds it (now {data}); nothing was run"
                )
