"""Figures of sweeps and fine-tunes from results directories (paper Fig. 1, 3-5, 11-18, 20-24).

Each function takes one or several results directories (paths or loaded
:class:`~three_regimes_jax.results.Results`) and returns a
:class:`matplotlib.figure.Figure` on an Agg canvas; save it with
:func:`plotting.common.save_figure`.  Colours, line styles and axis scales
follow :mod:`plotting.common`: one rainbow colour per ELR (legend "ELR"), one
line style per run, log axes for losses, gradient norms, ELRs and ESS, and
linear epochs unless ``epoch_scale="log"`` (the paper's long runs read well
either way; linear keeps fine-tunes, which start at a later epoch, in place).
"""

from __future__ import annotations

import importlib
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
    MARKERS,
    Curve,
    ElrPalette,
    MemberSpec,
    Run,
    RunLike,
    as_runs,
    curves,
    elr_legend,
    fmt_elr,
    guard_log_axes,
    new_figure,
    positive,
    select_members,
    style_entries,
    style_legend,
)
from three_regimes_jax.errors import UserError

#: Regime label -> colour in scatter plots (anything else is grey).
REGIME_COLORS = {"1": "tab:blue", "2": "tab:green", "3": "tab:red"}
REGIME_NAMES = {"1": "1: convergence", "2": "2: chaotic equilibrium", "3": "3: divergence"}

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


def _palette(runs: Sequence[Run]) -> ElrPalette:
    return ElrPalette(np.concatenate([r.elr for r in runs]))


def _suptitle(fig: Figure, what: str, runs: Sequence[Run]) -> None:
    titles = list(dict.fromkeys(t for t in (r.title() for r in runs) if t))
    fig.suptitle(f"{what}" + (f" — {'; '.join(titles)}" if titles else ""), fontsize=11)


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
    palette = _palette(rs)
    cs = curves(rs)
    fig = new_figure(15.0, 4.2)
    axes = fig.subplots(1, 3)
    for ax, (name, label, scale) in zip(axes, _OVERVIEW, strict=True):
        for c in cs:
            y = c.run.array(name)[c.index]
            _draw(ax, c, c.run.epoch, positive(y) if scale == "log" else y, palette)
        ax.set_yscale(scale)
        _epoch_axis(ax, epoch_scale)
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    _legends(fig, palette, cs)
    _suptitle(fig, "Training at fixed ELR", rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (b) diagram


def diagram(runs: RunLike | Sequence[RunLike]) -> Figure:
    """Phase diagrams: eff. grad norm vs train loss and test error vs train loss.

    Paper Fig. 1 right (and Fig. 3, 5, 11-18, 23): one trajectory per member,
    coloured by ELR, its first recorded epoch marked by a star; log-log in the
    first panel, log train loss and linear test error in the second.  Several
    runs are overlaid with one line style each.

    Args:
      runs: one or several results directories (paths or loaded results).

    Returns:
      A figure with two panels.
    """
    rs = as_runs(runs)
    palette = _palette(rs)
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
            i0 = int(np.argmax(ok))
            ax.plot(x[i0], y[i0], marker="*", ms=13, color=palette(c.elr), mec="k", mew=0.7, ls="")
        ax.set_xscale("log")
        ax.set_yscale(scale)
        ax.set_xlabel("train loss")
        ax.set_ylabel(label)
        ax.grid(True, which="major", alpha=0.3)
    start = ("start (first epoch)", {"marker": "*", "ms": 11, "ls": "", "mfc": "w"})
    _legends(fig, palette, cs, extra=[start])
    _suptitle(fig, "Training trajectories", rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (c) scatter


def load_regimes(path: str | Path | None) -> dict[str, Any] | None:
    """The regime classification of a results directory, if one can be had.

    Reads ``DIR/regimes.json`` if present, else calls
    ``three_regimes_jax.regimes.classify_dir(DIR)`` if that module exists.
    A classifier that fails is reported as a warning and treated as absent.

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
    f = path / "regimes.json"
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {f}: {e}; fix or delete it") from None
    try:
        regimes = importlib.import_module("three_regimes_jax.regimes")
    except ModuleNotFoundError as e:
        if e.name in ("three_regimes_jax.regimes",):
            return None
        raise
    classify_dir = getattr(regimes, "classify_dir", None)
    if classify_dir is None:
        return None
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
      last: average each metric over the last ``last`` epochs (1: final value).
      regimes: a classification to use for every run instead of reading one.

    Returns:
      A figure with three panels, log ELR axes.
    """
    if last < 1:
        raise UserError(f"last must be >= 1, got {last}")
    rs = as_runs(runs)
    palette = _palette(rs)
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
            vals = run.array(name)[:, -last:]
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
        ax.set_xlabel("ELR")
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
    _suptitle(fig, what, rs)
    guard_log_axes(fig)
    return fig


# --------------------------------------------------------------------------- (d) groups

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
    (dashed).  In equilibrium all groups share one ESS ``elr_i * g_i = ESS*``;
    since ``sum_i 1/elr_i = 1/elr`` (eq. 3), that ESS is ``ESS* = elr * sum_i g_i``.
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
    palette = ElrPalette(r.elr[sel])
    g_cols = _group_colors(n)

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
        ess_star = float(r.elr[g] * np.sum(gn))
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
    ax_ess.set_title("Per-group ESS; dashed: ESS* = elr · Σ g_i", fontsize=10)
    for ax in (ax_eq, ax_ess):
        ax.grid(True, which="major", alpha=0.3)
    # At least a decade on the log axes, so a 0.1% spread does not look like a big one.
    _min_span(ax_eq, "x")
    _min_span(ax_eq, "y")
    _min_span(ax_ess, "y")
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
        ax.axhline(r.elr[g], color="k", ls="--", lw=1.0, label="total ELR")
        ax.set_yscale("log")
        ax.set_title(
            f"ELR {fmt_elr(r.elr[g])}, seed {r.seed[g]}", fontsize=9, color=palette(r.elr[g])
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
    _suptitle(fig, "Per-group ELRs and effective step sizes", [r])
    guard_log_axes(fig)
    return fig


def _min_span(ax: Any, axis: str, factor: float = 10.0) -> None:
    """Widens a log axis (geometrically about its centre) to span at least ``factor``."""
    lo, hi = ax.get_xlim() if axis == "x" else ax.get_ylim()
    if not (lo > 0 and hi > 0) or hi / lo >= factor:
        return
    mid, half = math.sqrt(lo * hi), math.sqrt(factor)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(mid / half, mid * half)


def _group_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.95, n)]


# --------------------------------------------------------------------------- (f) random walk


def randomwalk(runs: RunLike | Sequence[RunLike], *, epoch_scale: str = "linear") -> Figure:
    """Training vs its random-walk baseline: train loss and adjacent-epoch cosine (Fig. 24).

    Runs with ``config["random_walk"]`` are drawn dashed, the others solid;
    colours are ELRs.  Runs without ``adjacent_cos`` are left out of that panel.

    Args:
      runs: results directories, at least one a random-walk run.
      epoch_scale: ``"linear"`` (default) or ``"log"`` epoch axis.

    Returns:
      A figure with two panels: train loss (log) and ``adjacent_cos`` (linear).

    Raises:
      UserError: none of the runs is a random-walk run.
    """
    _check_epoch_scale(epoch_scale)
    rs = as_runs(runs)
    if not any(r.random_walk for r in rs):
        raise UserError(
            "the random-walk figure needs a run made with --random-walk (config random_walk true)"
        )
    palette = _palette(rs)
    fig = new_figure(12.5, 4.4)
    axes = fig.subplots(1, 2)
    panels = (("train_loss", "train loss", "log"),)
    panels += (("adjacent_cos", "cosine between adjacent epochs", "linear"),)
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
                ax.plot(r.epoch, y, color=palette(r.elr[g]), ls=ls, lw=1.3)
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
    _suptitle(fig, "SGD vs random walk on the sphere", rs)
    guard_log_axes(fig)
    return fig
