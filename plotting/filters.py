"""Per-filter ELRs and effective gradient norms (paper Fig. 4 and Fig. 21).

Every filter (output unit of an SI kernel: a convolution's output channel, a
dense layer's output unit) is scale-invariant on its own, since BatchNorm
normalises each channel.  Runs made with ``--filter-groups`` record, per
epoch, each filter's ELR, effective gradient norm and ESS (``filter_elr``,
``filter_eff_grad_norm``, ``filter_ess``, ``[G, T, F]``).  In the second
regime the filters' effective step sizes equalise, ``elr_f * g_f = ESS*``
(:func:`equilibrium_ess`).  The figure shows, for each member (Fig. 21: one
panel per total ELR), every filter's ELR against its effective gradient
norm, averaged over a window of final epochs (the paper: the last 200
epochs), with the curve ``elr_f = ESS*/g_f`` dashed.

Filters are coloured by their layer: the ``filter_group`` array (layer index
per filter) when the results have it, else the layers are recovered from eq.
3 per layer (the filters of each SI group are contiguous, in the order of
``group_names``, and their ``1/elr_f`` sum to the group's ``1/elr_i``), else
one colour.  numpy + matplotlib only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from plotting.common import MemberSpec, Run, RunLike, as_runs, select_members, suptitle
from plotting.style import (
    ElrPalette,
    fmt_elr,
    group_colors,
    guard_log_axes,
    min_span,
    new_figure,
    style_legend,
)
from three_regimes_jax.errors import UserError

#: The default window: the last this many trained epochs (paper Fig. 4, 21) ...
WINDOW_EPOCHS = 200

#: ... or the last half of training when that is shorter.
WINDOW_FRAC = 0.5

FILTER_KEYS = ("filter_elr", "filter_eff_grad_norm")


def has_filters(run: Run) -> bool:
    """Whether the run recorded per-filter statistics (``--filter-groups``)."""
    if not all(run.has(k) for k in FILTER_KEYS):
        return False
    shape = np.shape(run.metrics["filter_elr"])
    return len(shape) == 3 and shape[2] > 0


def filter_window(trained: int, last: int | None = None) -> int:
    """Number of final epochs averaged.

    Args:
      trained: the run's number of trained epochs (without the epoch-0 entry).
      last: an explicit window (capped at ``trained``); default: the last
        :data:`WINDOW_EPOCHS` epochs, or the last half of training if shorter.

    Raises:
      UserError: ``last < 1``.
    """
    if last is not None:
        if last < 1:
            raise UserError(f"last must be >= 1, got {last}")
        return max(1, min(last, trained))
    return max(1, min(WINDOW_EPOCHS, math.ceil(WINDOW_FRAC * trained)))


def equilibrium_ess(run: Run, member: int, n: int, part_grad_norms: np.ndarray) -> float:
    """ESS*, the common ESS of all groups (or filters) in equilibrium, over a window.

    The ESS of the whole SI vector, ``elr * ||grad|| * ||theta||`` along the
    trajectory, averaged over the last ``n`` trained epochs: its trajectory
    mean ``eff_grad_norm_traj`` (in results before issue 10, ``eff_grad_norm``
    was that mean).  If every part's ESS equals ``E`` at a step, so does the
    whole's (``lr ||g|| / ||theta||`` with ``||g_i|| = E ||theta_i|| / lr``), so
    its time mean is the time mean of the equal ESS even while the parts
    oscillate.  ``elr * sum_i g_i`` (eq. 3) also equals ``E`` at every step but
    not for window means: ``sum_i 1/mean(elr_i) != 1/elr`` when the parts
    oscillate (their 2-cycles); on digits at ELR 0.05 (regime 2) the filters'
    mean ESS measured 0.747, the whole's 0.746, ``elr * sum_f g_f`` 0.573.
    That sum is the fallback when the results have no trajectory mean.  In a
    whole-space run (``run.sweeps_lr``) the total ELR is not the swept value:
    it is taken per epoch from the groups' ELRs (eq. 3) and averaged.

    Args:
      run: the run.
      member: member index.
      n: window length (trained epochs).
      part_grad_norms: ``[P]`` window means of the parts' effective gradient norms.
    """
    elr = float(run.elr[member])
    if run.sweeps_lr and run.has("group_elr"):
        # Whole space: the total ELR moves (``lr * schedule / rho**2``); eq. 3 per epoch.
        g_elr = run.array("group_elr")[member, run.start :][-n:]
        total = 1.0 / np.sum(1.0 / g_elr, axis=-1)
        if np.isfinite(total).any():
            elr = float(np.nanmean(total))
    key = "eff_grad_norm_traj" if run.has("eff_grad_norm_traj") else None
    if key is None and not run.start:
        key = "eff_grad_norm"  # the trajectory mean in results before issue 10
    if key is not None:
        traj = run.array(key)[member, run.start :][-n:]
        traj = traj[np.isfinite(traj)]
        if traj.size and np.mean(traj) > 0:
            return elr * float(np.mean(traj))
    return elr * float(np.nansum(part_grad_norms))


def _match_layers(inv_group: np.ndarray, inv_filter: np.ndarray, rtol: float) -> np.ndarray | None:
    """Layer per filter from ``cumsum(1/elr_f)`` meeting ``cumsum(1/elr_i)`` (None: no match)."""
    cg, cf = np.cumsum(inv_group), np.cumsum(inv_filter)
    ends = np.array([int(np.argmin(np.abs(cf - v))) for v in cg])
    close = np.abs(cf[ends] - cg) <= rtol * cg
    if not (close.all() and ends[-1] == cf.size - 1 and np.all(np.diff(ends) > 0)):
        return None
    return np.searchsorted(ends, np.arange(cf.size))


def filter_layers(metrics: Mapping[str, Any], rtol: float = 0.02) -> np.ndarray | None:
    """The layer (index into ``group_names``) of every filter, or None if unknown.

    ``filter_group`` when recorded; else recovered from eq. 3 (see the module
    docstring) at the last epoch with finite values of some member.
    """
    fe = np.asarray(metrics["filter_elr"], np.float64)
    n = fe.shape[-1]
    if "filter_group" in metrics and np.shape(metrics["filter_group"]) == (n,):
        return np.asarray(metrics["filter_group"], np.int64)
    if "group_elr" not in metrics:
        return None
    ge = np.asarray(metrics["group_elr"], np.float64)
    if ge.ndim != 3 or fe.ndim != 3 or ge.shape[:2] != fe.shape[:2] or ge.shape[2] > n:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.all((ge > 0) & np.isfinite(ge), -1) & np.all((fe > 0) & np.isfinite(fe), -1)
    for g in range(ge.shape[0]):
        t = np.flatnonzero(ok[g])
        if t.size:
            layers = _match_layers(1.0 / ge[g, t[-1]], 1.0 / fe[g, t[-1]], rtol)
            if layers is not None:
                return layers
    return None


def _window_mean(x: np.ndarray, start: int, n: int) -> np.ndarray:
    """Mean over the last ``n`` trained epochs of ``[G, T, F]`` (NaNs ignored)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x[:, start:][:, -n:], axis=1)


def filters(run: RunLike, *, member: MemberSpec | None = None, last: int | None = None) -> Figure:
    """Per-filter ELRs vs effective gradient norms, one panel per member (paper Fig. 4, 21).

    Each point is a filter: its effective gradient norm ``g_f`` (x) and ELR
    ``elr_f`` (y), both averaged over the window; the dashed black line is the
    equilibrium ``elr_f = ESS*/g_f`` (:func:`equilibrium_ess`).  The panel
    title gives the member, ``ESS*`` and the spread of ``log10 ESS_f`` over
    the filters (standard deviation, in decades, of the window means of
    ``filter_ess``, else of ``elr_f * g_f``): small in the second regime.

    Args:
      run: one results directory (path or loaded results) with ``filter_elr``
        and ``filter_eff_grad_norm``.
      member: pick members by ELR (``1e-3``), ``"ELR:SEED"`` or ``(elr, seed)``;
        default: every member gets a panel.
      last: number of final trained epochs averaged (default: the last 200, or
        the last half of training if shorter; see :func:`filter_window`).

    Returns:
      The figure.

    Raises:
      UserError: the run has no per-filter statistics, or no member matches.
    """
    rs = as_runs(run)
    if len(rs) != 1:
        raise UserError(f"the filters figure shows one run at a time, got {len(rs)}")
    r = rs[0]
    if not has_filters(r):
        raise UserError(
            f"{r.label} has no per-filter statistics (filter_elr, filter_eff_grad_norm); "
            "train with --filter-groups"
        )
    sel = select_members(r, member)
    f_elr, f_gn = r.array("filter_elr"), r.array("filter_eff_grad_norm")
    trained = f_elr.shape[1] - r.start
    n = filter_window(trained, last)
    mean_elr, mean_gn = (_window_mean(a[sel], r.start, n) for a in (f_elr, f_gn))
    f_ess = r.array("filter_ess") if r.has("filter_ess") else f_elr * f_gn
    mean_ess = _window_mean(f_ess[sel], r.start, n)
    layers = filter_layers(r.metrics)
    names = [str(s) for s in r.metrics.get("group_names", [])]
    n_layers = int(layers.max()) + 1 if layers is not None else 0
    colors = group_colors(max(n_layers, 1))
    palette = ElrPalette(r.elr[sel], title="LR" if r.sweeps_lr else "ELR")

    ncols = min(len(sel), 4)
    nrows = -(-len(sel) // ncols)
    fig = new_figure(max(6.0, 3.9 * ncols), 0.9 + 3.4 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for k, g in enumerate(sel):
        ax = axes[k]
        gn, el = mean_gn[k], mean_elr[k]
        ok = np.isfinite(gn) & np.isfinite(el) & (gn > 0) & (el > 0)
        point_colors = [colors[int(layers[i])] for i in np.flatnonzero(ok)] if n_layers else "k"
        ax.scatter(gn[ok], el[ok], s=9, c=point_colors, alpha=0.7, lw=0)
        title = f"{palette.title} {fmt_elr(r.elr[g])}, seed {r.seed[g]}"
        if ok.any():
            ess_star = equilibrium_ess(r, g, n, gn)
            ess = mean_ess[k][np.isfinite(mean_ess[k]) & (mean_ess[k] > 0)]
            spread = float(np.std(np.log10(ess))) if ess.size else float("nan")
            xs = np.geomspace(gn[ok].min() / 2.0, gn[ok].max() * 2.0, 20)
            ax.plot(xs, ess_star / xs, color="k", ls="--", lw=1.0)
            title += f"\nESS* {ess_star:.3g}, spread of log10 ESS {spread:.2f}"
        ax.set_title(title, fontsize=9, color=palette(r.elr[g]))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="major", alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("ELR of the filter")
        if k + ncols >= len(sel):
            ax.set_xlabel("effective gradient norm of the filter")
        min_span(ax, "x", 20.0)
        min_span(ax, "y")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short spans
    for ax in axes[len(sel) :]:
        ax.set_visible(False)
    entries = [("elr_f = ESS*/g_f", {"ls": "--", "lw": 1.0})]
    for i in range(n_layers):
        label = names[i].removesuffix("/kernel") if i < len(names) else f"layer {i}"
        entries.append((label, {"marker": "o", "ls": "", "mfc": colors[i], "mec": colors[i]}))
    style_legend(fig, entries, "layer" if n_layers else "")
    what = f"Per-filter ELRs and effective gradient norms, mean of the last {n} epochs"
    suptitle(fig, what, [r])
    guard_log_axes(fig)
    return fig


__all__ = [
    "WINDOW_EPOCHS",
    "equilibrium_ess",
    "filter_layers",
    "filter_window",
    "filters",
    "has_filters",
]
