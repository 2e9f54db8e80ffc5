"""``run_plot``: the ``three-regimes plot`` command (results dirs, interpolate files, toy dirs).

``three-regimes plot DIR [DIR2 ...] [--kind KIND] [--out FIGDIR] [--member M]``
renders figures to ``FIGDIR/<name>.png`` and ``FIGDIR/<name>.pdf``:

============  ==========================================  ================================
kind          inputs it needs                             files
============  ==========================================  ================================
overview      results dirs (all overlaid)                 ``overview``
diagram       results dirs (all overlaid)                 ``diagram``
scatter       results dirs (all overlaid)                 ``scatter``
groups        results dirs with per-group statistics      ``groups`` (one run) or
                                                          ``groups_<dir>`` (one per run)
filters       results dirs with per-filter statistics     ``filters`` (one run) or
              (``--filter-groups``)                       ``filters_<dir>`` (one per run)
filtersteps   results dirs with ``--filter-log-steps``     ``filtersteps`` (Fig. 20; one per run)
sharpness     results dirs with ``--sharpness-every``     ``sharpness`` (Figs. 9, 10)
lc            interpolate ``.npz`` files                  ``lc``
randomwalk    a results dir with ``random_walk`` true     ``randomwalk``
toy           toy dirs (``DIR/toy.npz``)                  ``toy_loss``, ``toy_group_elr``
                                                          (``_<dir>`` suffix if several)
============  ==========================================  ================================

``--kind all`` (the default) renders every kind that applies to the inputs.
``--member`` (an ELR, ``ELR:SEED``) limits ``groups`` and ``filters`` to that
member; with several runs, runs without it are skipped (an error only if none
has it).
Every input is checked, and every figure rendered in memory, before anything is
written; each file is then written atomically.  Bad input raises
:class:`~three_regimes_jax.errors.UserError` with one line, and nothing is written.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from plotting import figures, final
from plotting import toy as toy_plots
from plotting.common import (
    FORMATS,
    MemberSpec,
    Run,
    as_runs,
    parse_member,
    render,
    select_members,
)
from plotting.connectivity import is_interpolate_file, lc
from plotting.filters import filters, has_filters
from plotting.sharpness import has_sharpness, sharpness
from plotting.steps import filter_steps, has_filter_steps
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import atomic_write, check_writable

#: Figure kinds, in the order ``all`` renders them.
KINDS = (
    "overview",
    "diagram",
    "scatter",
    "groups",
    "filters",
    "filtersteps",
    "sharpness",
    "lc",
    "randomwalk",
    "toy",
)

_TOY_KEYS = ("loss", "group_elr", "elr")


@dataclasses.dataclass
class Inputs:
    """Inputs sorted by type.

    Attributes:
      runs: results directories (loaded).
      lc_files: interpolate ``.npz`` files.
      toy_files: toy ``toy.npz`` files.
    """

    runs: list[Run]
    lc_files: list[Path]
    toy_files: list[Path]


def _is_toy_npz(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as z:
            return all(k in z.files for k in _TOY_KEYS)
    except (OSError, ValueError):
        return False


def sort_inputs(paths: Sequence[str | os.PathLike]) -> Inputs:
    """Sorts paths into results dirs, interpolate files and toy dirs (loading results).

    Raises:
      UserError: a path is missing or none of the three.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        raise UserError("no input given; pass a results directory, interpolate .npz or toy dir")
    run_paths: list[Path] = []
    lc_files: list[Path] = []
    toy_files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"{p} does not exist; pass a results directory, .npz or toy dir")
        if p.is_dir() and (p / "metrics.npz").is_file() and (p / "config.json").is_file():
            run_paths.append(p)
        elif p.is_dir() and (p / "toy.npz").is_file() and _is_toy_npz(p / "toy.npz"):
            toy_files.append(p / "toy.npz")
        elif p.is_file() and is_interpolate_file(p):
            lc_files.append(p)
        elif p.is_file() and p.suffix == ".npz" and _is_toy_npz(p):
            toy_files.append(p)
        else:
            raise UserError(
                f"{p} is not a results directory (config.json + metrics.npz), an "
                "interpolate .npz, or a toy directory (toy.npz)"
            )
    runs = as_runs(run_paths) if run_paths else []
    return Inputs(runs, lc_files, toy_files)


def _has_groups(run: Run) -> bool:
    g = run.metrics.get("group_elr")
    return g is not None and np.ndim(g) == 3 and np.shape(g)[2] > 0


def _why_not(kind: str, inp: Inputs) -> str | None:
    """None if ``kind`` applies to the inputs, else the reason (one line)."""
    if kind in ("overview", "diagram", "scatter"):
        return None if inp.runs else f"--kind {kind} needs a results directory"
    if kind == "groups":
        if not inp.runs:
            return "--kind groups needs a results directory"
        if not any(_has_groups(r) for r in inp.runs):
            return "--kind groups needs per-group statistics (group_elr), which no input has"
        return None
    if kind == "filters":
        if not any(has_filters(r) for r in inp.runs):
            return "--kind filters needs per-filter statistics (a run made with --filter-groups)"
        return None
    if kind == "filtersteps":
        if not any(has_filter_steps(r) for r in inp.runs):
            return "--kind filtersteps needs a results directory made with --filter-log-steps"
        return None
    if kind == "sharpness":
        if not any(has_sharpness(r) for r in inp.runs):
            return "--kind sharpness needs a results directory made with --sharpness-every"
        return None
    if kind == "lc":
        return None if inp.lc_files else "--kind lc needs a `three-regimes interpolate` .npz file"
    if kind == "randomwalk":
        if not any(r.random_walk for r in inp.runs):
            return "--kind randomwalk needs a results directory made with --random-walk"
        return None
    if kind == "toy":
        return None if inp.toy_files else "--kind toy needs a toy directory (DIR/toy.npz)"
    raise AssertionError(kind)


def _holds(run: Run, member: MemberSpec) -> bool:
    try:
        select_members(run, member)
    except UserError as e:
        if "matches no member" in str(e):
            return False
        raise
    return True


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _suffixes(labels: Sequence[str]) -> list[str]:
    """Unique file-name suffixes, ``""`` when there is a single item."""
    if len(labels) == 1:
        return [""]
    out: list[str] = []
    for lab in labels:
        s = f"_{_safe(lab)}"
        while s in out:
            s += "_"
        out.append(s)
    return out


def build_figures(
    inp: Inputs, kinds: Sequence[str], member: MemberSpec | None = None
) -> list[tuple[str, Figure]]:
    """``(file name, figure)`` for every requested kind (all assumed applicable)."""
    out: list[tuple[str, Figure]] = []
    simple: dict[str, Callable[..., Figure]] = {
        "overview": figures.overview,
        "diagram": figures.diagram,
        "scatter": final.scatter,
    }
    for kind in kinds:
        if kind in simple:
            out.append((kind, simple[kind](inp.runs)))
        elif kind in ("groups", "filters"):
            has, draw = (_has_groups, final.groups) if kind == "groups" else (has_filters, filters)
            rs = [r for r in inp.runs if has(r)]
            if member is not None:  # several runs: those holding the member; none: an error
                hits = [r for r in rs if _holds(r, member)]
                if not hits:
                    select_members(rs[0], member)  # raises the UserError listing the members
                rs = hits
            for r, sfx in zip(rs, _suffixes([r.label for r in rs]), strict=True):
                out.append((f"{kind}{sfx}", draw(r, member=member)))
        elif kind == "filtersteps":
            rs = [r for r in inp.runs if has_filter_steps(r)]
            for r, sfx in zip(rs, _suffixes([r.label for r in rs]), strict=True):
                out.append((f"filtersteps{sfx}", filter_steps(r, member=member)))
        elif kind == "sharpness":
            out.append(("sharpness", sharpness(inp.runs)))
        elif kind == "lc":
            out.append(("lc", lc(inp.lc_files)))
        elif kind == "randomwalk":
            out.append(("randomwalk", figures.randomwalk(inp.runs)))
        elif kind == "toy":
            labels = [f.parent.name if f.name == "toy.npz" else f.stem for f in inp.toy_files]
            for f, sfx in zip(inp.toy_files, _suffixes(labels), strict=True):
                loss_fig, elr_fig = toy_figures(f)
                out += [(f"toy_loss{sfx}", loss_fig), (f"toy_group_elr{sfx}", elr_fig)]
    return out


def toy_figures(path: str | os.PathLike) -> tuple[Figure, Figure]:
    """The toy figures (paper Fig. 2 and 8) of a toy dir or ``toy.npz`` (via :mod:`plotting.toy`).

    Returns:
      ``(loss figure, group-ELR figure)``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "toy.npz"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `three-regimes toy --out DIR` first")
    return toy_plots.figures_from_npz(path)


def _default_out(first: Path) -> Path:
    base = first if first.is_dir() else first.parent
    return base / "figures"


def run_plot(
    paths: Sequence[str | os.PathLike],
    kind: str = "all",
    out: str | os.PathLike | None = None,
    member: MemberSpec | None = None,
) -> list[Path]:
    """Renders figures of results dirs, interpolate files and toy dirs to PNG and PDF.

    Args:
      paths: results directories, interpolate ``.npz`` files and/or toy dirs.
      kind: one of :data:`KINDS`, or ``"all"`` for every kind that applies.
      out: output directory; default ``figures/`` inside the first input's
        directory (for a file: beside it).
      member: for ``groups`` and ``filters``: an ELR, ``"ELR:SEED"`` or
        ``(elr, seed)`` (default: every member gets a panel).  Ignored by
        other kinds.

    Returns:
      The paths written (``<name>.png`` and ``<name>.pdf`` per figure).

    Raises:
      UserError: missing or unrecognised input, unknown kind, a kind that does
        not apply to the inputs, an unknown member, an unwritable ``out``.
        Nothing is written then.
    """
    if kind != "all" and kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)} or all, got {kind!r}")
    if member is not None:
        parse_member(member)  # a malformed spec is an error before anything is read
    inp = sort_inputs(paths)
    if kind == "all":
        kinds = [k for k in KINDS if _why_not(k, inp) is None]
    else:
        why = _why_not(kind, inp)
        if why is not None:
            raise UserError(why)
        kinds = [kind]
    first = Path(paths[0] if not isinstance(paths, str | os.PathLike) else paths)
    out_dir = check_writable(Path(out) if out is not None else _default_out(first))
    figs = build_figures(inp, kinds, member)
    payload = [
        (f"{name}.{fmt}", data) for name, fig in figs for fmt, data in render(fig, FORMATS).items()
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, data in payload:
        atomic_write(out_dir / fname, data)
        written.append(out_dir / fname)
    return written
