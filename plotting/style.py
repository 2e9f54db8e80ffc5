"""Look of the figures: ELR colours, line styles, legends, figure creation, log axes.

Conventions (after the paper's figures):

- One colour per ELR, along matplotlib's ``rainbow`` colormap over log ELR
  (small ELRs violet/blue, large ones red), shared by every panel and every
  run of a figure; legends of ELR colours are titled "ELR".
- Several runs in one figure are told apart by line style (or marker), with a
  second legend titled "run".
- Losses, effective gradient norms, ELRs and ESS are drawn on log axes; test
  error and cosines on linear ones; epochs on a linear axis by default
  (``epoch_scale="log"`` where a function offers it).

numpy + matplotlib only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, FigureBase
from matplotlib.lines import Line2D

#: Line styles of successive runs (and of fine-tune sources within a run).
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))

#: Markers of successive runs in scatter plots.
MARKERS = ("o", "s", "^", "D", "v", "P")


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


def min_span(ax: Any, axis: str, factor: float = 10.0) -> None:
    """Widens a log axis (geometrically about its centre) to span at least ``factor``.

    So a 0.1% spread does not look like a big one.
    """
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    if not (lo > 0 and hi > 0) or hi / lo >= factor:
        return
    mid, half = math.sqrt(lo * hi), math.sqrt(factor)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(mid / half, mid * half)


def group_colors(n: int) -> list[Any]:
    """``n`` distinct colours for parameter groups (``tab10``, else ``viridis``)."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.95, n)]


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
      title: the legend title: ``"ELR"``, or ``"LR"`` for whole-space runs,
        whose members are keyed by their initial LR.
    """

    def __init__(
        self, elrs: Iterable[float] | np.ndarray, cmap: str = "rainbow", title: str = "ELR"
    ):
        self.title = title
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
    return _place(target, palette.handles(elrs, **(style or {})), palette.title, loc, kw)


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


__all__ = [
    "LINESTYLES",
    "MARKERS",
    "ElrPalette",
    "elr_legend",
    "fmt_elr",
    "group_colors",
    "guard_log_axes",
    "min_span",
    "new_figure",
    "positive",
    "style_legend",
]
