"""Sharpness diagrams (paper Figs. 9, 10): trajectories in (measure, measure) planes.

- Fig. 9: the mean effective gradient norm (eq. 28) against the
  gradient-covariance trace (eq. 29) during training;
- Fig. 10: the train loss against the effective FIM trace (left) and the top
  Hessian eigenvalue (right).

One trajectory per member, coloured by ELR, through the epochs at which
sharpness was measured (``--sharpness-every``), its first point starred.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from plotting.common import Run, RunLike, as_runs, curves, run_palette, style_entries, suptitle
from plotting.style import elr_legend, guard_log_axes, new_figure, positive, style_legend

#: (x, y, x label, y label) of each panel: Fig. 9, then Fig. 10's two.
PANELS = (
    (
        "grad_cov_trace",
        "eff_grad_norm",
        "gradient covariance trace (29)",
        "mean gradient norm (28)",
    ),
    ("fim_trace", "train_loss", "effective FIM trace", "train loss"),
    ("hessian_top_eig", "train_loss", "top Hessian eigenvalue", "train loss"),
)


def has_sharpness(run: Run) -> bool:
    """Whether the run measured sharpness (a non-empty ``sharpness_epoch``)."""
    return run.has("sharpness_epoch") and np.size(run.metrics["sharpness_epoch"]) > 0


def _at_sharpness_epochs(run: Run, name: str) -> np.ndarray:
    """``[G, T']``: an epoch metric at the sharpness epochs (or a sharpness metric)."""
    values = run.array(name)
    if name in dict.fromkeys(p[0] for p in PANELS):
        return values
    epochs = np.asarray(run.metrics["epoch"]).ravel()
    cols = [int(np.flatnonzero(epochs == e)[0]) for e in np.asarray(run.metrics["sharpness_epoch"])]
    return values[:, cols]


def sharpness(runs: RunLike | Sequence[RunLike]) -> Figure:
    """Figs. 9 and 10: one panel per (measure, measure) pair of :data:`PANELS`.

    Args:
      runs: results directories with sharpness measurements (others are skipped).

    Returns:
      A figure with three log-log panels.
    """
    rs = [r for r in as_runs(runs) if has_sharpness(r)]
    palette = run_palette(rs)
    cs = curves(rs)
    fig = new_figure(16.0, 4.8)
    for ax, (xn, yn, xl, yl) in zip(fig.subplots(1, 3), PANELS, strict=True):
        for c in cs:
            x = positive(_at_sharpness_epochs(c.run, xn)[c.index])
            y = positive(_at_sharpness_epochs(c.run, yn)[c.index])
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            color = palette(c.elr)
            ax.plot(x[ok], y[ok], color=color, ls=c.linestyle, lw=1.3, marker=".", ms=3)
            i0 = int(np.argmax(ok))
            ax.plot(x[i0], y[i0], marker="*", ms=12, color=color, mec="k", mew=0.7, ls="")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(True, which="major", alpha=0.3)
    elr_legend(fig, palette, {c.elr for c in cs})
    entries = style_entries(cs)
    start = ("first measurement", {"marker": "*", "ms": 11, "ls": "", "mfc": "w"})
    style_legend(fig, [*entries, start] if len(entries) > 1 else [start], "run")
    suptitle(fig, "Sharpness along training (Figs. 9, 10)", rs)
    guard_log_axes(fig)
    return fig
