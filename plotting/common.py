"""Shared pieces of the figures: inputs, run facts from configs, member selection, saving.

Everything here is numpy + matplotlib + ``three_regimes_jax.storage.results``
and ``three_regimes_jax.config`` (both pure Python/numpy); nothing imports JAX
or training code.  Colours, line styles and legends are in :mod:`plotting.style`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from plotting.style import LINESTYLES, ElrPalette, fmt_elr
from three_regimes_jax.analysis.stats import start_offset
from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results, atomic_write, load_results
from three_regimes_jax.storage.shards import by_schedule, load_runs

#: A results directory path or loaded :class:`~three_regimes_jax.storage.results.Results`.
RunLike = Results | str | os.PathLike

#: A member selection: an ELR (number or string ``"1e-3"``), ``"ELR:SEED"``,
#: or an ``(elr, seed)`` tuple.
MemberSpec = float | str | tuple[float, int]

#: Formats written by :func:`save_figure`.
FORMATS = ("png", "pdf")

#: Resolution of saved PNGs.
DPI = 150


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the figures need from a run's ``config.json``.

    Attributes:
      model: the architecture (e.g. ``mlp_si``), None if unknown.
      dataset: the dataset (e.g. ``digits``), None if unknown.
      random_walk: whether the run is a random-walk baseline (App. M).
      whole: ``None`` on the sphere; in the whole parameter space (``train.mode
        = whole``) a few words on how, e.g. ``"whole space, cosine LR, wd
        0.0005, momentum 0.9, augmented"``.
    """

    model: str | None
    dataset: str | None
    random_walk: bool
    whole: str | None = None


def _lookup(config: Mapping[str, Any], section: str, key: str, flat: str) -> Any:
    """``config[section][key]`` (nested layout) or ``config[flat]`` (flat layout).

    A fine-tune's ``source_config`` is searched too.  None if neither holds it.
    """
    for cfg in (config, config.get("source_config")):
        if not isinstance(cfg, Mapping):
            continue
        sec = cfg.get(section)
        if isinstance(sec, Mapping) and key in sec:
            return sec[key]
        if flat in cfg and not isinstance(cfg[flat], Mapping):
            return cfg[flat]
    return None


def run_info(config: Any) -> RunInfo:
    """The model, dataset and random-walk flag of a config in either ``config.json`` layout.

    Read with :meth:`three_regimes_jax.config.Config.from_dict`, which knows the
    nested layout (``model.name``, ``data.dataset``, ``train.random_walk``) and
    the flat one of format 1 (fine-tunes through their ``source_config``).  A
    config it refuses (unknown keys, bad values) is searched key by key instead,
    so a malformed config still plots, with whatever it names.
    """
    try:
        cfg = Config.from_dict(config)
    except (UserError, TypeError, ValueError):
        if not isinstance(config, Mapping):
            return RunInfo(None, None, False)
        model = _lookup(config, "model", "name", "model")
        dataset = _lookup(config, "data", "dataset", "dataset")
        return RunInfo(
            model if isinstance(model, str) else None,
            dataset if isinstance(dataset, str) else None,
            bool(_lookup(config, "train", "random_walk", "random_walk")),
        )
    t = cfg.train
    whole = None
    if t.mode == "whole":
        wds = ",".join(f"{w:g}" for w in t.weight_decays)
        whole = f"whole space, {t.schedule} LR, wd {wds}" + (
            f", momentum {t.momentum:g}" if t.momentum else ""
        )
    if t.augment:
        whole = (whole or "sphere") + ", augmented"
    return RunInfo(cfg.model.name, cfg.data.dataset, t.random_walk, whole)


@dataclasses.dataclass(frozen=True)
class Run:
    """A loaded results directory with the name it is shown under.

    Attributes:
      results: the loaded results.
      path: the directory it was read from (None for in-memory results).
      label: short name for legends (the directory name by default).
    """

    results: Results
    path: Path | None
    label: str

    @property
    def metrics(self) -> dict[str, np.ndarray]:
        """The run's metrics arrays."""
        return self.results.metrics

    @property
    def config(self) -> dict[str, Any]:
        """The run's config dict."""
        return self.results.config

    @property
    def elr(self) -> np.ndarray:
        """``[G]`` member ELRs."""
        return np.asarray(self.metrics["elr"], np.float64).ravel()

    @property
    def seed(self) -> np.ndarray:
        """``[G]`` member seeds."""
        return np.asarray(self.metrics["seed"]).ravel().astype(np.int64)

    @property
    def epoch(self) -> np.ndarray:
        """``[T]`` epochs."""
        return np.asarray(self.metrics["epoch"], np.float64).ravel()

    @functools.cached_property
    def start(self) -> int:
        """1 if the first per-epoch entry is the start of training (no step yet), else 0.

        Results written since issue 10 begin at epoch 0 (a fine-tune: at its
        source epoch), see :func:`three_regimes_jax.analysis.stats.start_offset`.
        """
        return start_offset(self.metrics)

    @functools.cached_property
    def info(self) -> RunInfo:
        """Model, dataset and random-walk flag from the config (:func:`run_info`)."""
        return run_info(self.config)

    @property
    def random_walk(self) -> bool:
        """Whether the run is a random-walk baseline (the config's ``random_walk``)."""
        return self.info.random_walk

    @property
    def source_elr(self) -> np.ndarray | None:
        """``[G]`` ELRs of the pre-trained members (fine-tunes only), else None."""
        if "source_elr" not in self.metrics:
            return None
        return np.asarray(self.metrics["source_elr"], np.float64).ravel()

    def diverged(self) -> np.ndarray:
        """``[G]`` booleans: members marked diverged."""
        if "diverged" in self.metrics:
            return np.asarray(self.metrics["diverged"], bool).ravel()
        return np.zeros(self.elr.size, bool)

    def array(self, name: str) -> np.ndarray:
        """Metric ``name`` as float64 (``test_error`` is computed as ``1 - test_acc``)."""
        if name == "test_error":
            return 1.0 - np.asarray(self.metrics["test_acc"], np.float64)
        return np.asarray(self.metrics[name], np.float64)

    def has(self, name: str) -> bool:
        """Whether metric ``name`` is present."""
        if name == "test_error":
            return "test_acc" in self.metrics
        return name in self.metrics

    def title(self) -> str:
        """``model on dataset`` from the config (empty if unknown)."""
        info = self.info
        model, data = info.model, info.dataset
        text = f"{model} on {data}" if model and data else ""
        return f"{text} ({info.whole})" if text and info.whole else text

    @property
    def sweeps_lr(self) -> bool:
        """Whether the run sweeps LRs (whole space): its ``elr`` array holds initial LRs."""
        return "lr" in self.metrics


def as_runs(runs: RunLike | Sequence[RunLike]) -> list[Run]:
    """Loads one or several results directories (or wraps loaded results).

    Args:
      runs: a path, a :class:`Results`, a :class:`Run`, or a sequence of them.

    Returns:
      One :class:`Run` per input, labelled by directory name; the shard
      directories of one run (``sweep --shard K/N``) become one run, named by
      their parent directory; a grid of ELR schedules becomes one run per
      schedule, labelled ``name [schedule]``.

    Raises:
      UserError: a path is not a readable results directory, or no run is given.
    """
    if isinstance(runs, Results | Run | str | os.PathLike):
        runs = [runs]
    out: list[Run] = []
    if runs and all(isinstance(r, str | os.PathLike) for r in runs):
        # The shards of one run (sweep --shard K/N) plot as that run.
        runs = [Run(res, ps[0], _label(ps)) for ps, res in load_runs(runs)]
    for i, r in enumerate(runs):
        if isinstance(r, Run):
            out.append(r)
        elif isinstance(r, Results):
            label = str(r.config.get("name", f"run {i + 1}"))
            out.append(Run(r, None, label))
        else:
            path = Path(r)
            out.append(Run(load_results(path), path, path.resolve().name or str(path)))
    if not out:
        raise UserError("no results to plot; pass at least one results directory")
    # A grid of ELR schedules plots as one run per schedule ("runs/x [cosine]").
    out = [dataclasses.replace(r, results=res, label=f"{r.label} [{name}]" if name else r.label)
           for r in out for name, res in by_schedule(r.results)]  # fmt: skip
    _dedupe_labels(out)
    return out


def _label(paths: list[Path]) -> str:
    """A directory's name; the shards of one run are named by their (first) parent directory."""
    path = paths[0].resolve()
    if len(paths) > 1 and path.parent.name:
        return path.parent.name
    return path.name or str(paths[0])


def _dedupe_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(runs):
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            runs[i] = dataclasses.replace(r, label=f"{r.label} ({n + 1})")


def run_palette(runs: Sequence[Run]) -> ElrPalette:
    """One ELR palette over every member of every run (titled "LR" for whole-space runs)."""
    title = "LR" if runs and all(r.sweeps_lr for r in runs) else "ELR"
    return ElrPalette(np.concatenate([r.elr for r in runs]), title=title)


def suptitle(fig: Figure, what: str, runs: Sequence[Run]) -> None:
    """``what — model on dataset; ...`` as the figure title (distinct run titles only)."""
    titles = list(dict.fromkeys(t for t in (r.title() for r in runs) if t))
    text = f"{what}" + (f" — {'; '.join(titles)}" if titles else "")
    width_chars = fig.get_figwidth() * 72 / 6.5  # ~ characters of an 11-pt title per line
    fig.suptitle(textwrap.fill(text, max(40, int(width_chars))), fontsize=11)


@dataclasses.dataclass(frozen=True)
class Curve:
    """One member's trajectory and how to draw it.

    Attributes:
      run: the run it belongs to.
      index: member index in the run.
      elr: the member's ELR (colour).
      linestyle: style of its run (or fine-tune source).
      style_label: legend label of that style.
    """

    run: Run
    index: int
    elr: float
    linestyle: Any
    style_label: str


def curves(runs: Sequence[Run], members: dict[int, list[int]] | None = None) -> list[Curve]:
    """Every member of every run, with a line style per run (and per fine-tune source).

    Within a fine-tune with several pre-trained sources, each source gets its
    own style (label ``run (from ELR)``), and within a whole-space run with
    several weight decays each weight decay (label ``run (wd 0.0005)``);
    otherwise a run has one style.

    Args:
      runs: the runs.
      members: optional run index -> member indices to keep.
    """
    out: list[Curve] = []
    n_style = 0
    for r_i, run in enumerate(runs):
        src = run.source_elr
        wd = run.metrics.get("weight_decay")
        keys = [None] * run.elr.size if src is None else [float(s) for s in src]
        what = "from"
        if src is None and wd is not None and len(set(np.asarray(wd).tolist())) > 1:
            keys, what = [float(w) for w in np.asarray(wd)], "wd"
        distinct = list(dict.fromkeys(keys))
        styles = {}
        for k in distinct:
            label = run.label + (" (random walk)" if run.random_walk else "")
            if k is not None and (len(distinct) > 1 or len(runs) > 1):
                label = f"{label} ({what} {fmt_elr(k)})"
            styles[k] = (LINESTYLES[n_style % len(LINESTYLES)], label)
            n_style += 1
        keep = range(run.elr.size) if members is None else members.get(r_i, [])
        for g in keep:
            ls, label = styles[keys[g]]
            out.append(Curve(run, g, float(run.elr[g]), ls, label))
    return out


def style_entries(cs: Sequence[Curve]) -> list[tuple[str, dict[str, Any]]]:
    """Distinct ``(label, {"ls": style})`` of the curves, in order."""
    seen: dict[str, Any] = {}
    for c in cs:
        seen.setdefault(c.style_label, c.linestyle)
    return [(label, {"ls": ls}) for label, ls in seen.items()]


def parse_member(spec: MemberSpec) -> tuple[float, int | None]:
    """Parses a member spec into ``(elr, seed or None)``.

    Args:
      spec: an ELR (number or ``"1e-3"``), ``"ELR:SEED"`` or ``(elr, seed)``.

    Raises:
      UserError: the spec cannot be read.
    """
    try:
        if isinstance(spec, tuple):
            elr, seed = float(spec[0]), int(spec[1])
        elif isinstance(spec, str):
            head, _, tail = spec.strip().partition(":")
            elr, seed = float(head), (int(tail) if tail.strip() else None)
        else:
            elr, seed = float(spec), None
    except (TypeError, ValueError, IndexError):
        raise UserError(
            f"--member {spec!r} is not an ELR or ELR:SEED (e.g. 1e-3 or 1e-3:0)"
        ) from None
    if not (math.isfinite(elr) and elr > 0):
        raise UserError(f"--member ELR must be a finite number > 0, got {spec!r}")
    return elr, seed


def select_members(run: Run, spec: MemberSpec | None) -> list[int]:
    """Indices of the members of ``run`` matching ``spec`` (all when None).

    Raises:
      UserError: no member matches.
    """
    if spec is None:
        return list(range(run.elr.size))
    elr, seed = parse_member(spec)
    hits = [
        g
        for g in range(run.elr.size)
        if math.isclose(run.elr[g], elr, rel_tol=1e-6) and (seed is None or run.seed[g] == seed)
    ]
    if not hits:
        have = ", ".join(f"{fmt_elr(e)}:{s}" for e, s in zip(run.elr, run.seed, strict=True))
        raise UserError(f"--member {spec} matches no member of {run.label} (have ELR:SEED {have})")
    return hits


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """Renders ``fig`` to PNG or PDF bytes."""
    return render(fig, (fmt,))[fmt]


def render(fig: Figure, formats: Sequence[str] = FORMATS) -> dict[str, bytes]:
    """Renders ``fig`` in each format, laying it out only once.

    ``savefig`` of a constrained-layout figure draws it twice (a layout pass,
    then the output), per format; here the layout runs once, is frozen while
    the formats are written, and the layout engine is restored afterwards.

    Returns:
      Format -> file bytes.
    """
    import io

    engine = fig.get_layout_engine()
    out = {}
    try:
        if engine is not None:
            fig.draw_without_rendering()
            fig.set_layout_engine("none")
        for fmt in formats:
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=DPI)
            out[fmt] = buf.getvalue()
    finally:
        if engine is not None:
            fig.set_layout_engine(engine)
    return out


def save_figure(
    fig: Figure,
    out_dir: str | os.PathLike,
    name: str,
    formats: Sequence[str] = FORMATS,
) -> list[Path]:
    """Writes ``out_dir/name.png`` and ``out_dir/name.pdf``, each atomically.

    Both files are rendered in memory first; each is then written to a
    temporary file beside its target and renamed over it (``os.replace``), so a
    failure never leaves a partial file.

    Args:
      fig: the figure.
      out_dir: output directory (created if missing).
      name: file name without extension.
      formats: formats to write.

    Returns:
      The paths written.
    """
    payload = render(fig, formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt, data in payload.items():
        path = out / f"{name}.{fmt}"
        atomic_write(path, data)
        paths.append(path)
    return paths
