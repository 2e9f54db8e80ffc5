"""Figures of the final state of training (paper Fig. 4, 20, 21 and the regime scatter).

- :func:`scatter`: final train loss, test error and effective gradient norm
  against ELR, coloured by regime, with the classifier's transition brackets
  (:func:`load_regimes`: ``DIR/regimes.json``, else
  :func:`three_regimes_jax.analysis.report.classify_dir`);
- :func:`groups`: per-group ELRs, effective gradient norms and effective step
  sizes against the equilibrium ``elr_i * g_i = ESS*``.

Inputs, colours and saving as in :mod:`plotting.figures`.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from plotting.common import (
    MemberSpec,
    RunLike,
    as_runs,
    run_palette,
    select_members,
    suptitle,
)
from plotting.filters import equilibrium_ess
from plotting.style import (
    MARKERS,
    ElrPalette,
    elr_legend,
    fmt_elr,
    group_colors,
    guard_log_axes,
    min_span,
    new_figure,
    positive,
    style_legend,
)
from three_regimes_jax.analysis.report import REGIMES_FILE, classify_dir
from three_regimes_jax.errors import UserError

#: Regime label -> colour in scatter plots (anything else is grey).
REGIME_COLORS = {"1": "tab:blue", "2": "tab:green", "3": "tab:red"}
REGIME_NAMES = {"1": "1: convergence", "2": "2: chaotic equilibrium", "3": "3: divergence"}


# --------------------------------------------------------------------------- (a) scatter


def load_regimes(path: str | Path | None) -> dict[str, Any] | None:
    """The regime classification of a results directory, if one can be had.

    Reads ``DIR/regimes.json`` if present, else classifies the directory with
    :func:`three_regimes_jax.analysis.report.classify_dir` (numpy only).  A
    classification that fails is reported as a warning and treated as absent.

    Args:
      path: the results directory (None: no classification).

    Returns:
      ``{"members": [{"elr", "seed", "regime", ...}], "transitions": {"1-2":
      [lo, hi] or None, "2-3": ...}}`` or None.

    Raises:
      UserError: ``regimes.json`` exists but is not readable JSON.
    """
    if path is None:
        return None
    path = Path(path)
    f = path / REGIMES_FILE
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {f}: {e}; fix or delete it") from None
    try:
        return classify_dir(str(path))
    except Exception as e:  # noqa: BLE001 - borders are optional; plot without them
        warnings.warn(
            f"regime classification of {path} failed ({type(e).__name__}: {e}); "
            "plotting without regime borders",
            stacklevel=2,
        )
        return None


def _regime_of(reg: Mapping[str, Any] | None, elr: float, seed: int) -> str | None:
    if not reg:
        return None
    for m in reg.get("members", []) or []:
        try:
            same = math.isclose(float(m["elr"]), elr, rel_tol=1e-6)
            if same and ("seed" not in m or int(m["seed"]) == seed):
                return None if m.get("regime") is None else str(m["regime"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def regime_borders(reg: Mapping[str, Any] | None) -> list[tuple[str, float, float, float]]:
    """``(name, lo, hi, border)`` per known transition, border = sqrt(lo * hi)."""
    out = []
    for name, bracket in ((reg or {}).get("transitions") or {}).items():
        try:
            lo, hi = (float(v) for v in bracket)
        except (TypeError, ValueError):
            continue
        if math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi:
            out.append((str(name), lo, hi, math.sqrt(lo * hi)))
    return out


_SCATTER = (
    ("train_loss", "final train loss", "log"),
    ("test_error", "final test error", "linear"),
    ("eff_grad_norm", "final mean effective gradient norm", "log"),
)


def scatter(
    runs: RunLike | Sequence[RunLike],
    *,
    last: int = 1,
    regimes: Mapping[str, Any] | None = None,
) -> Figure:
    """Final train loss, test error and eff. gradient norm vs ELR, with regime borders.

    Points are coloured by regime when a classification is available (see
    :func:`load_regimes`; ``regimes`` overrides it), else by ELR.  Each
    transition ``[lo, hi]`` is shaded lightly and its border drawn dashed at
    ``sqrt(lo * hi)``.  Diverged members are marked ``x`` at the top edge.

    Args:
      runs: one or several results directories; several get one marker each.
      last: average each metric over the last ``last`` trained epochs (1: final
        value; the epoch-0 entry of newer results never counts).
      regimes: a classification to use for every run instead of reading one.

    Returns:
      A figure with three panels, log ELR axes.
    """
    if last < 1:
        raise UserError(f"last must be >= 1, got {last}")
    rs = as_runs(runs)
    palette = run_palette(rs)
    fig = new_figure(15.0, 4.4)
    axes = fig.subplots(1, 3)
    seen_regimes: set[str] = set()
    run_entries = []
    any_diverged = False
    for r_i, run in enumerate(rs):
        reg = regimes if regimes is not None else load_regimes(run.path)
        marker = MARKERS[r_i % len(MARKERS)]
        run_entries.append((run.label, {"marker": marker, "ls": "", "mfc": "w"}))
        labels = [_regime_of(reg, e, s) for e, s in zip(run.elr, run.seed, strict=True)]
        colors = [
            REGIME_COLORS.get(lab, "0.5") if reg else palette(e)
            for lab, e in zip(labels, run.elr, strict=True)
        ]
        seen_regimes |= {lab if lab is not None else "?" for lab in labels} if reg else set()
        diverged = run.diverged()
        for ax, (name, _, scale) in zip(axes, _SCATTER, strict=True):
            if not run.has(name):
                continue
            vals = run.array(name)[:, run.start :][:, -last:]  # trained epochs only
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                y = np.nanmean(vals, axis=1) if vals.shape[1] else np.full(run.elr.size, np.nan)
            y = positive(y) if scale == "log" else y
            bad = diverged | ~np.isfinite(y)
            ok = ~bad
            ax.scatter(
                run.elr[ok],
                y[ok],
                c=[colors[g] for g in np.flatnonzero(ok)],
                marker=marker,
                s=40,
                edgecolors="k",
                linewidths=0.5,
                zorder=3,
            )
            if bad.any():
                any_diverged = True
                tr = blended_transform_factory(ax.transData, ax.transAxes)
                ax.scatter(
                    run.elr[bad],
                    np.full(bad.sum(), 0.97),
                    transform=tr,
                    marker="x",
                    c="k",
                    s=40,
                    zorder=3,
                    clip_on=False,
                )
        for ax in axes:
            for name, lo, hi, border in regime_borders(reg):
                ax.axvspan(lo, hi, color="0.6", alpha=0.12, lw=0, zorder=0)
                ax.axvline(border, color="k", ls="--", lw=1.0, zorder=1)
                tr = blended_transform_factory(ax.transData, ax.transAxes)
                ax.text(border, 1.01, name, transform=tr, ha="center", va="bottom", fontsize=8)
    for ax, (_, label, scale) in zip(axes, _SCATTER, strict=True):
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.set_xlabel("initial LR" if all(r.sweeps_lr for r in rs) else "ELR")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    entries = []
    if seen_regimes:
        for lab in sorted(seen_regimes):
            c = REGIME_COLORS.get(lab, "0.5")
            name = REGIME_NAMES.get(lab, "unclassified" if lab == "?" else lab)
            entries.append((name, {"marker": "o", "ls": "", "mfc": c, "mec": "k"}))
    legend_ax = fig
    if entries:
        style_legend(legend_ax, entries, "regime", loc="outside right upper")
    else:
        elr_legend(
            legend_ax,
            palette,
            None,
            style={"marker": "o", "ls": ""},
        )
    extra = [("diverged", {"marker": "x", "ls": ""})] if any_diverged else []
    if len(rs) > 1 or extra:
        style_legend(
            legend_ax,
            [*(run_entries if len(rs) > 1 else []), *extra],
            "run",
        )
    what = "Final metrics vs ELR" + ("" if last == 1 else f" (mean of last {last} epochs)")
    suptitle(fig, what, rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (b) groups

_GROUP_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")


def _short(name: str) -> str:
    return name.removesuffix("/kernel")


def _last_mean(x: np.ndarray, last: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x[:, -last:], axis=1)


def groups(run: RunLike, *, member: MemberSpec | None = None, last: int = 5) -> Figure:
    """Per-group ELRs, effective gradient norms and ESS of a run (paper Fig. 4, 20, 21).

    Top left: each group's ELR ``elr_i`` against its effective gradient norm
    ``g_i`` (means over the last ``last`` epochs), one colour per member's ELR,
    one marker per group, with the equilibrium curve ``elr_i = ESS* / g_i``
    (dashed).  In equilibrium all groups share one ESS ``elr_i * g_i = ESS*``,
    the ESS of the whole SI vector along the trajectory (see
    :func:`plotting.filters.equilibrium_ess`).
    Top right: per-group ESS with the ``ESS*`` line.  Below: each member's
    per-group ELR over epochs (log scale) and the total ELR (dashed).

    Args:
      run: one results directory (path or loaded results).
      member: pick members by ELR (``1e-3``), ``"ELR:SEED"`` or ``(elr, seed)``;
        default: every member gets a panel.
      last: number of final epochs averaged in the top panels.

    Returns:
      The figure.

    Raises:
      UserError: the run has no per-group statistics, or no member matches.
    """
    if last < 1:
        raise UserError(f"last must be >= 1, got {last}")
    rs = as_runs(run)
    if len(rs) != 1:
        raise UserError(f"the groups figure shows one run at a time, got {len(rs)}")
    r = rs[0]
    needed = ("group_elr", "group_eff_grad_norm", "group_ess")
    missing = [k for k in needed if not r.has(k)]
    if missing or r.array("group_elr").ndim != 3 or r.array("group_elr").shape[2] == 0:
        raise UserError(f"{r.label} has no per-group statistics ({', '.join(needed)})")
    sel = select_members(r, member)
    g_elr, g_gn, g_ess = (r.array(k) for k in needed)
    n = g_elr.shape[2]
    names = [str(s) for s in r.metrics.get("group_names", [f"group {i}" for i in range(n)])]
    alone = np.asarray(r.metrics.get("group_individually_si", np.ones(n, bool)), bool)
    if alone.shape == (n,):  # groups SI only jointly (a ResNet's residual streams) say so
        names = [nm if ok else f"{nm} (joint SI)" for nm, ok in zip(names, alone, strict=True)]
    palette = ElrPalette(r.elr[sel], title="LR" if r.sweeps_lr else "ELR")
    g_cols = group_colors(n)

    ncols = min(len(sel), 4)
    nrows = -(-len(sel) // ncols)
    fig = new_figure(max(12.0, 3.4 * ncols), 4.8 + 2.8 * nrows)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.6, 2.8 * nrows])
    ax_eq, ax_ess = top.subplots(1, 2)
    mean_elr, mean_gn, mean_ess = (_last_mean(a[sel], last) for a in (g_elr, g_gn, g_ess))
    for k, g in enumerate(sel):
        col = palette(r.elr[g])
        gn, el, es = mean_gn[k], mean_elr[k], mean_ess[k]
        if not (np.isfinite(gn).all() and np.isfinite(el).all()):
            continue
        ess_star = equilibrium_ess(r, g, last, gn)
        for i in range(n):
            mk = _GROUP_MARKERS[i % len(_GROUP_MARKERS)]
            ax_eq.plot(gn[i], el[i], marker=mk, color=col, mec="k", mew=0.5, ms=8, ls="")
            ax_ess.plot(i, es[i], marker=mk, color=col, mec="k", mew=0.5, ms=8, ls="")
        # The curve over a decade around the member's groups (straight, slope -1, in log-log).
        pos = gn[gn > 0]
        if pos.size and ess_star > 0:
            xs = np.geomspace(pos.min() / 3.0, pos.max() * 3.0, 20)
            ax_eq.plot(xs, ess_star / xs, color=col, ls="--", lw=1.0)
        ax_ess.plot([-0.4, n - 0.6], [ess_star, ess_star], color=col, ls="--", lw=1.0)
    ax_eq.set_xscale("log")
    ax_eq.set_yscale("log")
    ax_eq.set_xlabel("effective gradient norm of the group")
    ax_eq.set_ylabel("ELR of the group")
    ax_eq.set_title(
        f"Groups, mean of the last {last} epochs; dashed: elr_i = ESS*/g_i", fontsize=10
    )
    ax_ess.set_yscale("log")
    ax_ess.set_xticks(
        range(n),
        [_short(s) for s in names],
        rotation=30 if n > 3 else 0,
        ha="right" if n > 3 else "center",
        fontsize=8,
    )
    ax_ess.set_xlim(-0.6, n - 0.4)
    ax_ess.set_ylabel("effective step size (ESS) of the group")
    ax_ess.set_title("Per-group ESS; dashed: ESS* (ESS of all SI parameters)", fontsize=10)
    for ax in (ax_eq, ax_ess):
        ax.grid(True, which="major", alpha=0.3)
    # At least a decade on the log axes, so a 0.1% spread does not look like a big one.
    min_span(ax_eq, "x")
    min_span(ax_eq, "y")
    min_span(ax_ess, "y")
    elr_legend(
        top,
        palette,
        r.elr[sel],
        style={"marker": "o", "ls": "", "mec": "k"},
    )
    group_entries = [
        (_short(s), {"marker": _GROUP_MARKERS[i % len(_GROUP_MARKERS)], "ls": "", "mfc": "w"})
        for i, s in enumerate(names)
    ]
    style_legend(ax_eq, group_entries, "group", loc="best")

    axes = np.atleast_1d(bottom.subplots(nrows, ncols, squeeze=False)).ravel()
    for k, g in enumerate(sel):
        ax = axes[k]
        for i in range(n):
            ax.plot(
                r.epoch, positive(g_elr[g, :, i]), color=g_cols[i], lw=1.2, label=_short(names[i])
            )
        if r.sweeps_lr:  # whole space: the total ELR moves; eq. 3 per epoch
            total = 1.0 / np.sum(1.0 / g_elr[g], axis=-1)
            ax.plot(r.epoch, positive(total), color="k", ls="--", lw=1.0, label="total ELR")
        else:
            ax.axhline(r.elr[g], color="k", ls="--", lw=1.0, label="total ELR")
        ax.set_yscale("log")
        ax.set_title(
            f"{palette.title} {fmt_elr(r.elr[g])}, seed {r.seed[g]}",
            fontsize=9,
            color=palette(r.elr[g]),
        )
        ax.grid(True, which="major", alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("ELR of the group")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if k + ncols >= len(sel):  # no panel below
            ax.set_xlabel("epoch")
        if k == 0:
            ax.legend(title="group", fontsize=7, title_fontsize=8, loc="best")
    for ax in axes[len(sel) :]:
        ax.set_visible(False)
    suptitle(fig, "Per-group ELRs and effective step sizes", [r])
    guard_log_axes(fig)
    return fig


__all__ = ["REGIME_COLORS", "REGIME_NAMES", "groups", "load_regimes", "regime_borders", "scatter"]
