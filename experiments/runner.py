"""The experiment catalog: one JSON config per paper figure, listed, validated and run.

A config (``experiments/configs/figNN.json``) describes how to reproduce one
figure of Kodryan et al. (NeurIPS 2022).  A figure that is ready has two
variants: ``paper`` (the paper's model, data, ELR grid and epochs, for a GPU)
and ``quick`` (a few minutes on a 2-core CPU, on real data, showing the same
qualitative effect).  Each variant is a list of steps; a step is a JSON object
whose ``run`` names what it does (``sweep``, ``finetune``, ``interpolate``,
``toy``, ``regimes``, ``plot``, ``find-transitions``) and whose other keys are
its arguments; training steps hold a config tree (see :mod:`experiments.steps`),
e.g. ``{"run": "sweep", "config": {"train": {"elrs": [0.001, 0.01], "epochs":
5}}, "out": "{out}/sweep"}``.

Placeholders in any string of a step:

- ``{out}``: the experiment's output directory (default ``runs/<name>-<variant>``);
- ``{data}``: the data root: ``$THREE_REGIMES_DATA_DIR`` if set, else
  ``../shared/data`` relative to the repository, resolved when the experiment runs.

Steps run in-process by calling the studies, analysis and plotting functions
directly (:func:`experiments.steps.run_step`).  Loading a config checks every
step's kind, keys and placeholders; before anything runs, every step's config
tree is built (so its values are checked) and every path that uses ``{data}``
must exist, so a typo or missing data fails at once with one line, not after
an hour of training.  A step that fails stops the experiment with a
:class:`~three_regimes_jax.errors.UserError` that names it.
:func:`~experiments.commands.format_step` renders a step as the equivalent
``three-regimes`` command line (``--dry-run``).

Figures that are not about training on the sphere (standard training with
weight decay) are listed with ``"status": "pending"`` and cannot be run yet.
"""

from __future__ import annotations

import copy
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

from experiments.commands import format_step
from experiments.steps import (
    PLACEHOLDER_RE,
    check_step,
    config_of,
    run_step,
    strings,
    validate_step,
)
from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.outdir import check_out_path

VARIANTS = ("paper", "quick")
STATUSES = ("ready", "pending")

_READY_KEYS = ("figure", "title", "shows", "paper_setup", "variants", "expected", "notes")
_PENDING_KEYS = ("figure", "title", "shows", "status", "notes")
_VARIANT_KEYS = {
    "paper": ("steps", "estimated_time", "estimate_basis"),
    "quick": ("steps", "measured_time_s", "measured_on"),
}
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

    Every step must have a known kind (``run``), known keys of the right JSON
    types, known config sections and fields, and only the ``{out}`` and
    ``{data}`` placeholders (:func:`experiments.steps.validate_step`).  Values
    are checked when the experiment runs (:func:`check_steps`).

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
            validate_step(step, f"experiment {name} ({variant}) step {i}")
    t = variants["quick"]["measured_time_s"]
    if t is not None and not (isinstance(t, int | float) and t >= 0):
        raise UserError(f"experiment {name} (quick): measured_time_s must be a number >= 0")


def data_root() -> Path:
    """The data root: ``$THREE_REGIMES_DATA_DIR``, else ``../shared/data`` beside the repo."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[1]
    return repo.parent / "shared" / "data"


def substitute(step: Any, out: str | os.PathLike, data: str | os.PathLike) -> Any:
    """A copy of a step with ``{out}`` and ``{data}`` replaced in every string."""
    values = {"out": str(out), "data": str(data)}
    if isinstance(step, str):
        return PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], step)
    if isinstance(step, dict):
        return {k: substitute(v, out, data) for k, v in step.items()}
    if isinstance(step, list):
        return [substitute(v, out, data) for v in step]
    return step


def run_experiment(
    name: str,
    variant: str = "quick",
    out: str | os.PathLike | None = None,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Runs an experiment's steps in order (or, with ``dry_run``, only returns them).

    Args:
      name: experiment name (``fig1``, ``1``, ...).
      variant: ``quick`` (default) or ``paper``.
      out: output directory (default ``runs/<name>-<variant>``).
      dry_run: return the substituted steps without checking values or data,
        and without running anything (:func:`format_step` renders them).

    Returns:
      The steps (placeholders substituted), in order: those run, or with
      ``dry_run`` those that would run.

    Raises:
      UserError: unknown name or variant, a pending figure, a step whose values
        are invalid, missing data, or a step that fails (named in the message).
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
    if not dry_run:
        check_out_path(out)
    raw = cfg["variants"][variant]["steps"]
    data = data_root()
    steps = [substitute(s, out, data) for s in raw]
    if dry_run:
        return steps
    label = f"{canon} ({variant})"
    check_steps(steps, label)
    _check_data(raw, steps, label, data)
    out.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps, 1):
        where = f"{label}: step {i}/{len(steps)}"
        print(f"[{where}] {format_step(step)}", flush=True)
        try:
            run_step(step)
        except UserError as e:
            raise UserError(f"{where} failed: {e} ({format_step(step)})") from None
    return steps


def check_steps(steps: list[dict[str, Any]], label: str) -> None:
    """Checks every step's values (builds its config) before anything runs.

    Raises:
      UserError: naming the experiment, the step and its command line.
    """
    for i, step in enumerate(steps, 1):
        try:
            check_step(step)
        except UserError as e:
            raise UserError(
                f"{label}: step {i}/{len(steps)} ({format_step(step)}) is invalid: {e}; "
                "nothing was run"
            ) from None


def _check_data(raw: list[Any], steps: list[Any], label: str, data: Path) -> None:
    """Every string that uses ``{data}`` must name an existing path."""
    for r, s in zip(strings(raw), strings(steps), strict=True):
        if "{data}" in r and not Path(s).exists():
            raise UserError(
                f"{label} needs data at {s}, which is missing; put it there or set "
                f"{DATA_ENV} to the folder that holds it (now {data}); nothing was run"
            )


__all__ = [
    "DATA_ENV",
    "VARIANTS",
    "canonical_name",
    "check_steps",
    "data_root",
    "experiment_names",
    "format_step",
    "list_experiments",
    "load_experiment",
    "run_experiment",
    "substitute",
    "validate_config",
]


def sweep_configs(name: str, variant: str) -> list[Config]:
    """The :class:`Config` of every sweep step of an experiment's variant (for ``plan``)."""
    variants = load_experiment(name)["variants"]
    if variant not in variants:
        raise UserError(f"{name} has no variant {variant!r}; it has {', '.join(variants)}")
    configs = [config_of(s) for s in variants[variant]["steps"] if s["run"] == "sweep"]
    if not configs:
        raise UserError(f"{name} ({variant}) has no sweep to plan")
    return configs
