"""Linear-connectivity figures from ``three-regimes interpolate`` files (paper Fig. 19, 22).

An interpolate file ``FILE.npz`` holds ``alpha`` [P]; ``train_loss``,
``train_acc``, ``test_loss``, ``test_acc`` [pairs, P]; ``barrier`` [pairs]; and
per pair ``a_elr``, ``b_elr``, ``a_source_elr``, ``b_source_elr``, ``a_epoch``,
``b_epoch`` (see ``three_regimes_jax.studies.connectivity.run_interpolate``).  This
module reads the file with numpy only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from plotting.style import (
    LINESTYLES,
    ElrPalette,
    fmt_elr,
    guard_log_axes,
    new_figure,
    positive,
)
from three_regimes_jax.errors import UserError

#: Arrays an interpolate file must hold.
REQUIRED = ("alpha", "train_loss", "barrier", "a_elr", "b_elr")

LcLike = str | os.PathLike | Mapping[str, np.ndarray]


def is_interpolate_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``.npz`` holding the arrays of an interpolate file."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return all(k in z.files for k in REQUIRED)
    except (OSError, ValueError):
        return False


def load_interpolation(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads an interpolate ``.npz``.

    Raises:
      UserError: the file is missing, unreadable or lacks the interpolate arrays.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(
            f"{path} is not a `three-regimes interpolate` file (missing {', '.join(missing)})"
        )
    return data


def _end_label(elr: float, src: float, epoch: Any, other_epoch: Any) -> str:
    s = fmt_elr(elr)
    if math.isfinite(src) and not math.isclose(src, elr, rel_tol=1e-6):
        s += f" (from {fmt_elr(src)})"
    if epoch is not None and other_epoch is not None and int(epoch) != int(other_epoch):
        s += f" @ep{int(epoch)}"
    return s


def pair_labels(data: Mapping[str, np.ndarray]) -> list[str]:
    """``"A elr → B elr"`` per pair (with source ELRs of fine-tunes and differing epochs)."""
    n = np.asarray(data["a_elr"]).size

    def get(key: str, default: np.ndarray) -> np.ndarray:
        return np.asarray(data[key]).ravel() if key in data else default

    a, b = np.asarray(data["a_elr"], float).ravel(), np.asarray(data["b_elr"], float).ravel()
    a_src, b_src = get("a_source_elr", a).astype(float), get("b_source_elr", b).astype(float)
    none = np.full(n, None, object)
    a_ep, b_ep = get("a_epoch", none), get("b_epoch", none)
    return [
        f"{_end_label(a[i], a_src[i], a_ep[i], b_ep[i])} → "
        f"{_end_label(b[i], b_src[i], b_ep[i], a_ep[i])}"
        for i in range(n)
    ]


def lc(files: LcLike | Sequence[LcLike]) -> Figure:
    """Train loss and test error along linear paths between solutions (Fig. 19, 22).

    One row per file; one line per pair, coloured by the ELR of its ``B`` end
    (rainbow over log ELR), labelled ``"A elr → B elr, barrier b"`` in a legend
    titled "ELR".  Train loss is on a log axis, test error on a linear one.

    Args:
      files: one or several interpolate ``.npz`` paths (or their loaded dicts).

    Returns:
      The figure.

    Raises:
      UserError: a file is not an interpolate file.
    """
    if isinstance(files, str | os.PathLike | Mapping):
        files = [files]
    items: list[tuple[str, Mapping[str, np.ndarray]]] = []
    for i, f in enumerate(files):
        if isinstance(f, Mapping):
            items.append((f"interpolation {i + 1}", f))
        else:
            items.append((Path(f).name, load_interpolation(f)))
    if not items:
        raise UserError("no interpolate files to plot")
    all_elrs = np.concatenate(
        [np.concatenate([np.ravel(d["a_elr"]), np.ravel(d["b_elr"])]) for _, d in items]
    )
    palette = ElrPalette(all_elrs)
    fig = new_figure(13.0, 0.6 + 4.0 * len(items))
    axes = fig.subplots(len(items), 2, squeeze=False)
    for row, (name, d) in enumerate(items):
        alpha = np.asarray(d["alpha"], float).ravel()
        labels = pair_labels(d)
        barrier = np.asarray(d["barrier"], float).ravel()
        b_elr = np.asarray(d["b_elr"], float).ravel()
        used: dict[float, int] = {}
        ax_loss, ax_err = axes[row]
        for p in range(b_elr.size):
            col = palette(b_elr[p])
            k = used.get(float(b_elr[p]), 0)
            used[float(b_elr[p])] = k + 1
            ls = LINESTYLES[k % len(LINESTYLES)]
            label = f"{labels[p]}, barrier {barrier[p]:.3g}"
            loss = np.asarray(d["train_loss"], float)[p]
            ax_loss.plot(alpha, positive(loss), color=col, ls=ls, marker=".", ms=4, label=label)
            if "test_acc" in d:
                err = 1.0 - np.asarray(d["test_acc"], float)[p]
                ax_err.plot(alpha, err, color=col, ls=ls, marker=".", ms=4)
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("train loss")
        ax_err.set_ylabel("test error")
        if "test_acc" not in d:
            ax_err.text(
                0.5,
                0.5,
                "no test_acc in this file",
                transform=ax_err.transAxes,
                ha="center",
                va="center",
                color="0.4",
            )
        for ax in (ax_loss, ax_err):
            ax.set_xlabel("α  (0: A, 1: B)")
            ax.set_xlim(alpha.min(), alpha.max())
            ax.grid(True, which="major", alpha=0.3)
        ax_loss.set_title(name, fontsize=10)
        ax_err.legend(
            *ax_loss.get_legend_handles_labels(),
            title="ELR",
            fontsize=8,
            title_fontsize=9,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
        )
    fig.suptitle("Linear connectivity: (1 − α) θ_A + α θ_B", fontsize=11)
    guard_log_axes(fig)
    return fig
