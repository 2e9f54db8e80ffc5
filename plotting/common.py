"""Shared pieces of the figures: inputs, ELR colours, legends, member selection, saving.

Everything here is numpy + matplotlib + ``three_regimes_jax.results`` (numpy only);
nothing imports JAX or training code.

Conventions (after the paper's figures):

- One colour per ELR, along matplotlib's ``rainbow`` colormap over log ELR
  (small ELRs violet/blue, large ones red), shared by every panel and every
  run of a figure; legends of ELR colours are titled "ELR".
- Several runs in one figure are told apart by line style (or marker), with a
  second legend titled "run".
- Losses, effective gradient norms, ELRs and ESS are drawn on log axes; test
  error and cosines on linear ones; epochs on a linear axis by default
  (``epoch_scale="log"`` where a function offers it).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, FigureBase
from matplotlib.lines import Line2D

from three_regimes_jax.errors import UserError
from three_regimes_jax.results import Results, atomic_write, load_results

#: A results directory path or loaded :class:`~three_regimes_jax.results.Results`.
RunLike = Results | str | os.PathLike

#: A member selection: an ELR (number or string ``"1e-3"``), ``"ELR:SEED"``,
#: or an ``(elr, seed)`` tuple.
MemberSpec = float | str | tuple[float, int]

#: Line styles of successive runs (and of fine-tune sources within a run).
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))

#: Markers of successive runs in scatter plots.
MARKERS = ("o", "s", "^", "D", "v", "P")

#: Formats written by :func:`save_figure`.
FORMATS = ("png", "pdf")

#: Resolution of saved PNGs.
DPI = 150


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

    @property
    def random_walk(self) -> bool:
        """Whether the run is a random-walk baseline (``config["random_walk"]``)."""
        return bool(self.config.get("random_walk", False))

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
        cfg = self.config.get("source_config", self.config)
        model, data = cfg.get("model"), cfg.get("dataset")
        return f"{model} on {data}" if model and data else ""


def as_runs(runs: RunLike | Sequence[RunLike]) -> list[Run]:
    """Loads one or several results directories (or wraps loaded results).

    Args:
      runs: a path, a :class:`Results`, a :class:`Run`, or a sequence of them.

    Returns:
      One :class:`Run` per input, labelled by directory name.

    Raises:
      UserError: a path is not a readable results directory, or no run is given.
    """
    if isinstance(runs, Results | Run | str | os.PathLike):
        runs = [runs]
    out: list[Run] = []
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
    _dedupe_labels(out)
    return out


def _dedupe_labels(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for i, r in enumerate(runs):
        n = seen.get(r.label, 0)
        seen[r.label] = n + 1
        if n:
            runs[i] = dataclasses.replace(r, label=f"{r.label} ({n + 1})")


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout :class:`Figure` on an Agg canvas (no pyplot state)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def guard_log_axes(fig: FigureBase) -> None:
    """Gives log axes that hold no positive finite data fixed limits and a note.

    Without it, a panel whose members all diverged (all NaN) cannot be drawn:
    matplotlib refuses to autoscale a log axis with no positive data.
    """
    for ax in fig.get_axes():
        empty = False
        for name, interval in (("x", ax.dataLim.intervalx), ("y", ax.dataLim.intervaly)):
            scale = ax.get_xscale() if name == "x" else ax.get_yscale()
            lo, hi = interval
            if scale == "log" and not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo <= hi):
                (ax.set_xlim if name == "x" else ax.set_ylim)(0.1, 10.0)
                empty = True
        if empty:
            ax.text(
                0.5,
                0.5,
                "no finite data",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
            )


def positive(x: np.ndarray) -> np.ndarray:
    """``x`` with non-positive and non-finite entries replaced by NaN (for log axes)."""
    x = np.asarray(x, np.float64)
    return np.where(np.isfinite(x) & (x > 0), x, np.nan)


def fmt_elr(elr: float) -> str:
    """An ELR as a short label, e.g. ``0.001``, ``1e-05``, ``0.3``."""
    return f"{elr:.3g}"


class ElrPalette:
    """ELR -> colour along the ``rainbow`` colormap, uniform in log ELR.

    Args:
      elrs: every ELR the figure will show (any shape; NaNs and non-positive
        values are ignored).
      cmap: a matplotlib colormap name.
    """

    def __init__(self, elrs: Iterable[float] | np.ndarray, cmap: str = "rainbow"):
        from matplotlib import colormaps

        vals = np.asarray(list(elrs) if not isinstance(elrs, np.ndarray) else elrs, np.float64)
        vals = vals[np.isfinite(vals) & (vals > 0)].ravel()
        self.elrs = sorted({float(v) for v in vals})
        self._cmap = colormaps[cmap]
        self._lo = math.log(self.elrs[0]) if self.elrs else 0.0
        self._hi = math.log(self.elrs[-1]) if self.elrs else 0.0

    def __call__(self, elr: float) -> tuple[float, float, float, float]:
        """The colour of ``elr``."""
        if not (math.isfinite(elr) and elr > 0):
            return (0.5, 0.5, 0.5, 1.0)
        if self._hi <= self._lo:
            return self._cmap(0.15)
        t = (math.log(elr) - self._lo) / (self._hi - self._lo)
        # Stop short of 1.0: the colormap's last colour is a pale red that vanishes on white.
        return self._cmap(0.02 + 0.96 * min(max(t, 0.0), 1.0))

    def handles(self, elrs: Iterable[float] | None = None, **style: Any) -> list[Line2D]:
        """Legend handles, one per ELR (ascending), coloured like the curves."""
        wanted = self.elrs if elrs is None else sorted({float(e) for e in elrs})
        kw = {"lw": 2.0, **style}
        return [Line2D([], [], color=self(e), label=fmt_elr(e), **kw) for e in wanted]


def _place(target: Any, handles: list[Line2D], title: str, loc: str, kw: dict[str, Any]):
    opts = {"title": title, "fontsize": 8, "title_fontsize": 9, "loc": loc, **kw}
    if isinstance(target, FigureBase):
        return target.legend(handles=handles, **opts)
    leg = target.legend(handles=handles, **opts)
    target.add_artist(leg)  # keep it when the axes gets another legend
    return leg


def elr_legend(
    target: Any,
    palette: ElrPalette,
    elrs: Iterable[float] | None = None,
    *,
    loc: str = "outside right upper",
    style: dict[str, Any] | None = None,
    **kw: Any,
):
    """Adds the ELR colour legend (title "ELR") and returns it.

    Args:
      target: a figure/subfigure (legend outside the axes, ``loc="outside ..."``)
        or an axes.
      palette: the figure's palette.
      elrs: the ELRs to list (default: all of the palette's).
      loc: legend location.
      style: extra Line2D keywords of the handles (e.g. markers).
      **kw: more ``legend`` keywords.
    """
    return _place(target, palette.handles(elrs, **(style or {})), "ELR", loc, kw)


def style_legend(
    target: Any,
    entries: Sequence[tuple[str, dict[str, Any]]],
    title: str,
    *,
    loc: str = "outside lower center",
    **kw: Any,
):
    """Adds a legend of black lines/markers (``(label, Line2D kwargs)``) and returns it.

    By default it goes below the axes, in a row (up to 4 entries per row), so
    it never collides with the ELR legend on the right.
    """
    handles = [Line2D([], [], color="k", label=lab, **{"lw": 1.5, **st}) for lab, st in entries]
    if loc == "outside lower center":
        kw = {"ncols": min(len(handles), 4), **kw}
    return _place(target, handles, title, loc, kw)


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
    own style (label ``run (from ELR)``); otherwise a run has one style.

    Args:
      runs: the runs.
      members: optional run index -> member indices to keep.
    """
    out: list[Curve] = []
    n_style = 0
    for r_i, run in enumerate(runs):
        src = run.source_elr
        keys = [None] * run.elr.size if src is None else [float(s) for s in src]
        distinct = list(dict.fromkeys(keys))
        styles = {}
        for k in distinct:
            label = run.label + (" (random walk)" if run.random_walk else "")
            if k is not None and (len(distinct) > 1 or len(runs) > 1):
                label = f"{label} (from {fmt_elr(k)})"
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
