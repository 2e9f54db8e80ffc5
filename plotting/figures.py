"""Figures of training trajectories from results directories (paper Fig. 1, 3, 5, 11-18, 23-24).

Each function takes one or several results directories (paths or loaded
:class:`~three_regimes_jax.storage.results.Results`) and returns a
:class:`matplotlib.figure.Figure` on an Agg canvas; save it with
:func:`plotting.common.save_figure`.  Colours, line styles and axis scales
follow :mod:`plotting.style`: one rainbow colour per ELR (legend "ELR"), one
line style per run, log axes for losses, gradient norms, ELRs and ESS, and
linear epochs unless ``epoch_scale="log"`` (the paper's long runs read well
either way; linear keeps fine-tunes, which start at a later epoch, in place).
The figures of the final state (``scatter``, ``groups``) are in :mod:`plotting.final`.

Epoch 0: results written since issue 10 start every curve at the
initialization (a fine-tune's at its source epoch), measured before any step.
On a linear epoch axis it is drawn at 0; a log epoch axis cannot show 0, so
there the epoch-0 point is left out (a fine-tune's start, at a positive epoch,
stays).  Step metrics are NaN at the start and simply begin at epoch 1.  The
diagrams' star marks the start entry when there is one, else the first
recorded epoch (older results).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from plotting.common import (
    Curve,
    RunLike,
    as_runs,
    curves,
    run_palette,
    style_entries,
    suptitle,
)
from plotting.style import (
    ElrPalette,
    elr_legend,
    guard_log_axes,
    new_figure,
    positive,
    style_legend,
)
from three_regimes_jax.errors import UserError

_EPOCH_SCALES = ("linear", "log")


def _check_epoch_scale(epoch_scale: str) -> None:
    if epoch_scale not in _EPOCH_SCALES:
        raise UserError(
            f"epoch_scale must be one of {', '.join(_EPOCH_SCALES)}, got {epoch_scale!r}"
        )


def _epoch_axis(ax: Any, scale: str) -> None:
    ax.set_xscale(scale)
    ax.set_xlabel("epoch")
    if scale == "linear":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def epochs_on(run: Any, scale: str) -> np.ndarray:
    """The run's epochs as x values: on a log axis, epoch 0 (and below) becomes NaN (left out)."""
    x = run.epoch
    return np.where(x > 0, x, np.nan) if scale == "log" else x


def _draw(ax: Any, c: Curve, x: np.ndarray, y: np.ndarray, palette: ElrPalette, **kw: Any) -> None:
    ax.plot(x, y, color=palette(c.elr), ls=c.linestyle, lw=kw.pop("lw", 1.3), **kw)


def _legends(fig: Figure, palette: ElrPalette, cs: Sequence[Curve], extra=()) -> None:
    """ELR legend plus, with several runs/sources (or extras), the run-style legend."""
    elr_legend(fig, palette, {c.elr for c in cs})
    entries = style_entries(cs)
    if len(entries) > 1 or extra:
        style_legend(fig, [*entries, *extra], "run")


# --------------------------------------------------------------------------- (a) overview

_OVERVIEW = (
    ("train_loss", "train loss", "log"),
    ("test_error", "test error", "linear"),
    ("eff_grad_norm", "mean effective gradient norm", "log"),
)


def overview(runs: RunLike | Sequence[RunLike], *, epoch_scale: str = "linear") -> Figure:
    """Train loss, test error and mean effective gradient norm vs epoch (paper Fig. 1 left).

    Whole-space runs (``--train whole``, keyed by LR) get a fourth panel: the
    norm of the SI weights, which weight decay and the gradient steps move
    (the periodic behaviour of Lobacheva et al.).

    One line per member, coloured by its ELR; several runs (e.g. fine-tunes
    over their baselines) are overlaid with one line style each.

    Args:
      runs: one or several results directories (paths or loaded results).
      epoch_scale: ``"linear"`` (default) or ``"log"`` epoch axis.

    Returns:
      A figure with three panels (log, linear, log y axes).
    """
    _check_epoch_scale(epoch_scale)
    rs = as_runs(runs)
    palette = run_palette(rs)
    cs = curves(rs)
    panels = _OVERVIEW
    if palette.title == "LR":  # whole space: the SI norm moves (on the sphere it is fixed)
        panels += (("si_norm", "SI weight norm", "log"),)
    fig = new_figure(5.0 * len(panels), 4.2)
    axes = fig.subplots(1, len(panels))
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        for c in cs:
            y = c.run.array(name)[c.index]
            x = epochs_on(c.run, epoch_scale)
            _draw(ax, c, x, positive(y) if scale == "log" else y, palette)
        ax.set_yscale(scale)
        _epoch_axis(ax, epoch_scale)
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    _legends(fig, palette, cs)
    what = "Training at fixed ELR" if palette.title == "ELR" else "Training by (initial) LR"
    suptitle(fig, what, rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (b) diagram


def diagram(runs: RunLike | Sequence[RunLike]) -> Figure:
    """Phase diagrams: eff. grad norm vs train loss and test error vs train loss.

    Paper Fig. 1 right (and Fig. 3, 5, 11-18, 23): one trajectory per member,
    coloured by ELR, its start marked by a star: the initialization (the
    epoch-0 entry; a fine-tune's source epoch) when the results have it, else
    the first recorded epoch (older results); log-log in the first panel, log
    train loss and linear test error in the second.  Several runs are overlaid
    with one line style each.

    Args:
      runs: one or several results directories (paths or loaded results).

    Returns:
      A figure with two panels.
    """
    rs = as_runs(runs)
    palette = run_palette(rs)
    cs = curves(rs)
    fig = new_figure(12.5, 5.0)
    axes = fig.subplots(1, 2)
    panels = (("eff_grad_norm", "mean effective gradient norm", "log"),)
    panels += (("test_error", "test error", "linear"),)
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        for c in cs:
            x = positive(c.run.array("train_loss")[c.index])
            y = c.run.array(name)[c.index]
            y = positive(y) if scale == "log" else y
            ok = np.isfinite(x) & np.isfinite(y)
            if not ok.any():
                continue
            _draw(ax, c, x[ok], y[ok], palette, marker=".", ms=3)
            i0 = int(np.argmax(ok))  # the start entry (epoch 0) if finite, else the first point
            ax.plot(x[i0], y[i0], marker="*", ms=13, color=palette(c.elr), mec="k", mew=0.7, ls="")
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.set_xlabel("train loss")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    starts = {bool(r.start) for r in rs}
    what = {
        frozenset({True}): "start (initialization, epoch 0)",
        frozenset({False}): "start (first epoch)",
    }.get(frozenset(starts), "start (initialization, else first epoch)")
    start = (what, {"marker": "*", "ms": 11, "ls": "", "mfc": "w"})
    _legends(fig, palette, cs, extra=[start])
    suptitle(fig, "Training trajectories", rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (c) random walk


def randomwalk(runs: RunLike | Sequence[RunLike], *, epoch_scale: str = "linear") -> Figure:
    """Training vs its random-walk baseline: train loss and adjacent-iteration cosine (Fig. 24).

    Paper Fig. 24 (App. M): the cosine between the weights on adjacent
    *iterations*, ``step_cos`` (its mean over each epoch's steps), near 0 for
    the random walk and the third regime, large in the second; not the
    cosine between adjacent epochs (``adjacent_cos``).  Runs with
    ``config["random_walk"]`` are drawn dashed, the others solid; colours are
    ELRs.  Runs without ``step_cos`` are left out of that panel.

    Args:
      runs: results directories, at least one a random-walk run.
      epoch_scale: ``"linear"`` (default) or ``"log"`` epoch axis.

    Returns:
      A figure with two panels: train loss (log) and ``step_cos`` (linear).

    Raises:
      UserError: none of the runs is a random-walk run.
    """
    _check_epoch_scale(epoch_scale)
    rs = as_runs(runs)
    if not any(r.random_walk for r in rs):
        raise UserError(
            "the random-walk figure needs a run made with --random-walk (config random_walk true)"
        )
    palette = run_palette(rs)
    fig = new_figure(12.5, 4.4)
    axes = fig.subplots(1, 2)
    panels = (("train_loss", "train loss", "log"),)
    panels += (("step_cos", "cosine between weights of adjacent iterations", "linear"),)
    # Solid-like styles for training runs, dashed-like ones for random walks.
    sgd_styles = ("-", ":", "-.")
    rw_styles = ("--", (0, (5, 1, 1, 1)), (0, (1, 3)))
    styles, n_sgd, n_rw = {}, 0, 0
    for r in rs:
        if r.random_walk:
            styles[r.label], n_rw = rw_styles[n_rw % len(rw_styles)], n_rw + 1
        else:
            styles[r.label], n_sgd = sgd_styles[n_sgd % len(sgd_styles)], n_sgd + 1
    entries: dict[str, Any] = {}
    for ax, (name, label, scale) in zip(axes, panels, strict=True):
        drawn = False
        for r in rs:
            if not r.has(name):
                continue
            ls = styles[r.label]
            entries.setdefault(f"{r.label} ({'random walk' if r.random_walk else 'SGD'})", ls)
            vals = r.array(name)
            for g in range(r.elr.size):
                y = positive(vals[g]) if scale == "log" else vals[g]
                ax.plot(epochs_on(r, epoch_scale), y, color=palette(r.elr[g]), ls=ls, lw=1.3)
                drawn = True
        if not drawn:
            ax.text(
                0.5,
                0.5,
                f"no {name} in these runs",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="0.4",
            )
        ax.set_yscale(scale)
        _epoch_axis(ax, epoch_scale)
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    elr_legend(fig, palette, None)
    style_legend(
        fig,
        [(k, {"ls": v}) for k, v in entries.items()],
        "run",
    )
    suptitle(fig, "SGD vs random walk on the sphere", rs)
    guard_log_axes(fig)
    return fig


__all__ = ["diagram", "epochs_on", "overview", "randomwalk"]
