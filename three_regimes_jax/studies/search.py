"""The adaptive zoom into transition brackets, independent of what each round trains.

:func:`run_search` is the round loop of
:func:`three_regimes_jax.studies.transitions.find_transitions` (networks) and
:func:`~three_regimes_jax.studies.transitions.find_toy_transitions` (the toy):

- round 1 is one grid of ``points`` log-spaced ELRs over the range
  (including both ends);
- every next round spreads ``points`` new ELRs log-spaced strictly inside the
  current brackets (the endpoints are already known; :func:`next_grid`): the
  brackets of the two borders are merged where they overlap (e.g. a direct
  1 -> 3 jump gives both borders the same bracket), and the points are split
  evenly between the resulting intervals (the first ones get the remainder);
  an ELR already measured is not measured again;
- after every round the brackets are recomputed from the labels of *all*
  rounds pooled.  Non-monotone labels widen a bracket
  (:func:`~three_regimes_jax.analysis.borders.transition_brackets` takes the union);
- the search stops early when no border is bracketed (nothing to zoom into).

numpy only.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from three_regimes_jax.analysis.borders import BORDERS, transition_brackets
from three_regimes_jax.errors import UserError
from three_regimes_jax.options import check_elrs

# --------------------------------------------------------------------------- validation


def parse_elr_range(text: str) -> tuple[float, float]:
    """Parses ``--elr-range LO,HI`` (e.g. ``"1e-6,10"``) and validates it."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise UserError(f"--elr-range must be two numbers LO,HI, e.g. 1e-6,10; got {text!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(
            f"--elr-range must be two numbers LO,HI, e.g. 1e-6,10; got {text!r}"
        ) from None
    return validate_elr_range((lo, hi))


def validate_elr_range(elr_range: Sequence[float]) -> tuple[float, float]:
    """Checks ``(lo, hi)``: ``0 < lo < hi``, both positive normal float32 numbers."""
    try:
        lo, hi = (float(v) for v in elr_range)
    except (TypeError, ValueError):
        raise UserError(f"the ELR range must be two numbers (lo, hi), got {elr_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise UserError(f"--elr-range must satisfy 0 < LO < HI (finite), got {lo:g},{hi:g}")
    check_elrs((lo, hi), "--elr-range")  # positive normal float32 numbers
    return lo, hi


def check_int(value: Any, what: str, low: int) -> int:
    """``value`` as an int if it is an integer (not a bool) ``>= low``, else :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise UserError(f"{what} must be an integer >= {low}, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- zooming


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` log-spaced ELRs from ``lo`` to ``hi`` inclusive."""
    return [float(v) for v in np.geomspace(lo, hi, points)]


def next_grid(brackets: Sequence[Sequence[float] | None], points: int) -> list[float]:
    """ELRs of the next round: ``points`` log-spaced strictly inside the brackets.

    Overlapping brackets are merged (brackets that only touch, such as
    ``[a, b]`` and ``[b, c]``, stay apart); points are split evenly between the
    merged intervals (the first ones get the remainder); each interval gets its
    points at ``geomspace(lo, hi, k + 2)[1:-1]``.  Empty or degenerate
    (``lo == hi``) brackets get none.

    Returns:
      Sorted, unique ELRs (empty when no bracket is usable).
    """
    ivs = sorted((float(b[0]), float(b[1])) for b in brackets if b is not None and b[1] > b[0])
    merged: list[list[float]] = []
    for lo, hi in ivs:
        if merged and lo < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    if not merged:
        return []
    k, extra = divmod(points, len(merged))
    out: list[float] = []
    for j, (lo, hi) in enumerate(merged):
        n = k + (1 if j < extra else 0)
        if n:
            out.extend(float(v) for v in np.geomspace(lo, hi, n + 2)[1:-1])
    return sorted(set(out))


def _not_found_reason(border: str, labels: Sequence[int], lo: float, hi: float) -> str:
    a, b = (int(x) for x in border.split("-"))
    labels = set(labels)
    if labels and max(labels) <= a:
        return f"every member is regime <= {a}: the {a}/{b} border lies above the range ({hi:g})"
    if labels and min(labels) >= b:
        return f"every member is regime >= {b}: the {a}/{b} border lies below the range ({lo:g})"
    return f"no neighbouring ELRs with labels {a} and {b} were found in [{lo:g}, {hi:g}]"


def run_search(
    run_round: Callable[[int, list[float]], tuple[dict[str, Any], int, float]],
    elr_range: tuple[float, float],
    rounds: int,
    points: int,
    progress: bool,
) -> dict[str, Any]:
    """The round loop shared by networks and the toy.

    ``run_round(k, elrs)`` trains round ``k`` and returns ``(classify report,
    compute units, wall seconds)``.
    """
    lo, hi = elr_range
    pooled: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    grid = log_grid(lo, hi, points)
    brackets: dict[str, Any] = {"transitions": dict.fromkeys(BORDERS), "midpoints": {}}
    report: dict[str, Any] = {}
    for k in range(1, rounds + 1):
        report, units, wall = run_round(k, grid)
        pooled.extend(report["members"])
        brackets = transition_brackets(
            [m["elr"] for m in pooled], [m["regime"] for m in pooled], [m["seed"] for m in pooled]
        )
        history.append(
            {
                "round": k,
                "elrs": grid,
                "members": report["members"],
                "transitions": brackets["transitions"],
                "compute": units,
                "wall_s": round(wall, 3),
            }
        )
        if progress:
            print(
                f"round {k}/{rounds}: {len(grid)} ELRs in {wall:.1f} s; "
                + "; ".join(f"{b}: {fmt_interval(brackets['transitions'][b])}" for b in BORDERS),
                file=sys.stderr,
            )
        if k == rounds:
            break
        measured = [m["elr"] for m in pooled]
        grid = [
            e
            for e in next_grid(list(brackets["transitions"].values()), points)
            if not any(math.isclose(e, d, rel_tol=1e-9) for d in measured)
        ]
        if not grid:  # nothing new to measure: the brackets cannot shrink further
            break
    labels = [m["regime"] for m in pooled]
    reasons = {}
    for b in BORDERS:
        iv = brackets["transitions"][b]
        if iv is None:
            reasons[b] = _not_found_reason(b, labels, lo, hi)
        else:
            ratio = iv[1] / iv[0]
            reasons[b] = (
                f"label changes between ELR {iv[0]:.4g} and {iv[1]:.4g} (ratio {ratio:.3g})"
            )
    return {
        "transitions": brackets["transitions"],
        "midpoints": brackets["midpoints"],
        "reasons": reasons,
        "rounds": history,
        "criteria": report.get("criteria", {}),
        "elr_range": [lo, hi],
        "points": points,
    }


def fmt_interval(iv: Sequence[float] | None) -> str:
    """A bracket as ``[lo, hi]`` (4 significant digits), or ``not found``."""
    return "not found" if iv is None else f"[{iv[0]:.4g}, {iv[1]:.4g}]"


__all__ = [
    "check_int",
    "fmt_interval",
    "log_grid",
    "next_grid",
    "parse_elr_range",
    "run_search",
    "validate_elr_range",
]
