"""Figures of the toy experiment (paper Fig. 2 and Fig. 8), from arrays or a ``toy.npz``.

Both figure functions build a :class:`matplotlib.figure.Figure` directly (no
pyplot, so no global state and no display backend); save it with
``fig.savefig(path)``.  :func:`write_toy_figures` writes both as PNGs into the
directory of a ``three-regimes toy`` run.  This module reads only arrays (or
the ``toy.npz`` written by ``three_regimes_jax.studies.toy_report``); it does
not import any training code.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import atomic_write

#: The PNGs :func:`write_toy_figures` writes: ``F`` per iteration (Fig. 2) and
#: the individual ELRs per iteration against eq. 9 (Fig. 8).
TOY_FIGURES = ("toy_loss.png", "toy_group_elr.png")

#: Resolution of the toy PNGs.
TOY_DPI = 120

#: Curves longer than this are thinned by a constant stride before plotting.
MAX_POINTS = 20_000

#: Lower limit of the log ``F`` axis: converging runs reach 1e-38 and would
#: squash the non-converging ones into a thin band.
Y_FLOOR = 1e-12


def load_toy_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a ``toy.npz`` into a dict of arrays."""
    with np.load(path) as data:
        return {k: np.asarray(data[k]) for k in data.files}


def _thin(t_len: int) -> np.ndarray:
    stride = max(1, -(-t_len // MAX_POINTS))
    return np.arange(0, t_len, stride)


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, count)]


def _alpha_text(alphas: Sequence[float] | np.ndarray | None) -> str:
    if alphas is None:
        return ""
    return "α = (" + ", ".join(f"{a:g}" for a in np.asarray(alphas).ravel()) + ")"


def toy_loss_figure(
    loss: np.ndarray,
    elr: Sequence[float] | np.ndarray,
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    predicted_level: Sequence[float] | np.ndarray | None = None,
) -> Figure:
    """``F`` vs iteration, log scale, one line per ELR (paper Fig. 2).

    Args:
      loss: ``[E, T]`` values of ``F`` (one start).  Exact zeros (regime 1 runs
        that reached the minimum to float precision) cannot be drawn on a log
        axis and are left out; the axis stops at :data:`Y_FLOOR`.
      elr: ``[E]`` ELRs; the legend is titled "ELR".
      alphas: optional ``[n]`` weights, shown in the title with the threshold
        ``1 / sum(alpha)``.
      predicted_level: optional ``[E]`` theory levels; positive ones are drawn
        as dashed lines in the ELR's colour.

    Returns:
      The figure.
    """
    loss = np.asarray(loss, np.float64)
    elr = np.asarray(elr, np.float64).ravel()
    if loss.ndim != 2 or loss.shape[0] != elr.size:
        raise ValueError(f"loss must be [E, T] with E = {elr.size}, got {loss.shape}")
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    idx = _thin(loss.shape[1])
    for e, color in enumerate(_colors(elr.size)):
        y = loss[e, idx]
        # Lower ELRs on top: their (settled) curves would hide under the fluctuating ones.
        z = 2.0 + elr.size - e
        ax.plot(idx, np.where(y > 0, y, np.nan), color=color, lw=1.0, label=f"{elr[e]:g}", zorder=z)
        if predicted_level is not None and predicted_level[e] > 0:
            ax.axhline(float(predicted_level[e]), color=color, ls="--", lw=1.0, zorder=z + 0.5)
    ax.set_yscale("log")
    positive = loss[loss > 0]
    if positive.size and positive.min() < Y_FLOOR:
        ax.set_ylim(bottom=Y_FLOOR)
    ax.set_xlabel("iteration")
    ax.set_ylabel("F")
    title = "Toy function on the unit sphere"
    if alphas is not None:
        threshold = 1.0 / float(np.sum(alphas))
        title += f", {_alpha_text(alphas)}, threshold 1/Σα = {threshold:.4g}"
    if predicted_level is not None:
        title += "\ndashed: predicted level (Σα − 1/ELR)/2"
    ax.set_title(title, fontsize=10)
    ax.legend(title="ELR", loc="best", fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return fig


def toy_group_elr_figure(
    group_elr: np.ndarray,
    elr: Sequence[float] | np.ndarray,
    *,
    alphas: Sequence[float] | np.ndarray | None = None,
    equilibrium: np.ndarray | None = None,
    threshold: float | None = None,
) -> Figure:
    """Individual ELRs vs iteration: rows = ELR, columns = group (paper Fig. 8).

    Args:
      group_elr: ``[E, T, n]`` individual ELRs ``lr / rho_i^2`` (one start).
      elr: ``[E]`` ELRs (row labels).
      alphas: optional ``[n]`` weights (column titles).
      equilibrium: optional ``[E, n]`` eq. 9 values, drawn as dashed lines.
      threshold: optional convergence threshold; if given, the dashed lines are
        drawn only in rows with ``elr > threshold``, where eq. 9 applies.

    Returns:
      The figure.
    """
    group_elr = np.asarray(group_elr, np.float64)
    elr = np.asarray(elr, np.float64).ravel()
    if group_elr.ndim != 3 or group_elr.shape[0] != elr.size:
        raise ValueError(f"group_elr must be [E, T, n] with E = {elr.size}, got {group_elr.shape}")
    n_e, t_len, n = group_elr.shape
    fig = Figure(figsize=(1.0 + 3.0 * n, 0.8 + 2.2 * n_e), layout="constrained")
    axes = fig.subplots(n_e, n, squeeze=False, sharex=True)
    idx = _thin(t_len)
    a = None if alphas is None else np.asarray(alphas, np.float64).ravel()
    legend_done = False
    for e in range(n_e):
        show_eq = equilibrium is not None and (threshold is None or elr[e] > threshold)
        for i in range(n):
            ax = axes[e, i]
            ax.plot(idx, group_elr[e, idx, i], color="C0", lw=0.8)
            if show_eq:
                ax.axhline(float(equilibrium[e, i]), color="k", ls="--", lw=1.0, label="eq. 9")
            ax.set_yscale("log")
            ax.grid(True, which="major", alpha=0.3)
            if e == 0:
                ax.set_title(f"group {i}" + ("" if a is None else f" (α = {a[i]:g})"), fontsize=10)
            if i == 0:
                ax.set_ylabel(f"ELR {elr[e]:g}\nindividual ELR")
            if e == n_e - 1:
                ax.set_xlabel("iteration")
            if show_eq and not legend_done:
                ax.legend(fontsize=8, loc="best")
                legend_done = True
    title = "Individual ELRs of the toy's groups"
    if equilibrium is not None:
        title += " (dashed: eq. 9, elr·Σα/α_i)"
    fig.suptitle(title, fontsize=11)
    return fig


def figures_from_npz(source: str | os.PathLike[str] | Mapping[str, np.ndarray]):
    """Both figures from a ``toy.npz`` path (or the dict it holds).

    Returns:
      ``(loss_figure, group_elr_figure)``.
    """
    data = source if isinstance(source, Mapping) else load_toy_npz(source)
    threshold = data.get("threshold")
    loss_fig = toy_loss_figure(
        data["loss"],
        data["elr"],
        alphas=data.get("alphas"),
        predicted_level=data.get("predicted_level"),
    )
    elr_fig = toy_group_elr_figure(
        data["group_elr"],
        data["elr"],
        alphas=data.get("alphas"),
        equilibrium=data.get("equilibrium_group_elr"),
        threshold=None if threshold is None else float(threshold),
    )
    return loss_fig, elr_fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=TOY_DPI)
    return buf.getvalue()


def write_toy_figures(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Draws the figures of a ``three-regimes toy`` directory next to its data.

    Reads ``run_dir/toy.npz`` (written by
    ``three_regimes_jax.studies.toy_report.run_toy_command``), renders both
    figures in memory and only then writes ``toy_loss.png`` and
    ``toy_group_elr.png`` (:data:`TOY_FIGURES`) into ``run_dir``, each
    atomically (a temporary file renamed over the target).

    Args:
      run_dir: the directory of a toy run.

    Returns:
      The paths written, in :data:`TOY_FIGURES` order.

    Raises:
      UserError: ``run_dir/toy.npz`` is missing or not a toy file.
    """
    run_dir = Path(run_dir)
    source = run_dir / "toy.npz"
    if not source.is_file():
        raise UserError(f"{source} does not exist; run `three-regimes toy --out {run_dir}` first")
    try:
        loss_fig, elr_fig = figures_from_npz(source)
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{source} is not a toy.npz of `three-regimes toy`: {e}") from None
    payload = dict(zip(TOY_FIGURES, (_png_bytes(loss_fig), _png_bytes(elr_fig)), strict=True))
    paths = []
    for name, data in payload.items():
        atomic_write(run_dir / name, data)
        paths.append(run_dir / name)
    return paths
