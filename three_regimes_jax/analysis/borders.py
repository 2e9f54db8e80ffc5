"""Transition brackets: where neighbouring ELRs carry different regime labels.

:func:`transition_brackets` turns labelled members into brackets ``[lo, hi]``
of the 1/2 and 2/3 borders; :func:`three_regimes_jax.analysis.regimes.classify`
adds them to its report and the adaptive search
(:mod:`three_regimes_jax.studies.transitions`) zooms into them.  Standard
library only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from three_regimes_jax.errors import UserError

BORDERS = ("1-2", "2-3")
#: Which label pairs bracket which border.  A direct jump 1 <-> 3 between two
#: neighbouring ELRs brackets both borders (the regime-2 range lies inside it).
_BORDER_PAIRS = {"1-2": ({1, 2}, {1, 3}), "2-3": ({2, 3}, {1, 3})}


def _geo_mid(lo: float, hi: float) -> float:
    return float(math.sqrt(lo * hi))


def transition_brackets(
    elrs: Sequence[float],
    regimes: Sequence[int],
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Brackets of the 1/2 and 2/3 transition ELRs from labelled members.

    Per seed, members are sorted by ELR; every pair of neighbouring ELRs whose
    labels differ is a *change*: ``{1, 2}`` brackets the 1/2 border, ``{2, 3}``
    the 2/3 border, and a direct ``{1, 3}`` jump brackets both (the regime-2
    range lies inside it).  A border's bracket is the union (smallest ``lo``,
    largest ``hi``) of its changes over all seeds, so noisy, non-monotone labels
    widen it rather than being dropped.  Its midpoint estimate is the geometric
    mean of the changes' geometric midpoints ``sqrt(lo * hi)`` (with one change,
    simply ``sqrt(lo * hi)``).  Members with equal labels at every ELR pool
    naturally: their changes coincide.

    Args:
      elrs: ``[G]`` member ELRs (> 0).
      regimes: ``[G]`` labels 1, 2 or 3.
      seeds: ``[G]`` member seeds (default: all one seed).

    Returns:
      ``{"transitions": {"1-2": [lo, hi] | None, "2-3": [lo, hi] | None},
      "midpoints": {"1-2": float | None, "2-3": float | None},
      "changes": [{"seed", "lo", "hi", "from", "to"}, ...]}``; a border
      without a change is ``None``.
    """
    elrs = [float(e) for e in elrs]
    regimes = [int(r) for r in regimes]
    seeds = [0] * len(elrs) if seeds is None else [int(s) for s in seeds]
    if not len(elrs) == len(regimes) == len(seeds):
        raise UserError(
            f"elrs, regimes and seeds differ in length ({len(elrs)}, {len(regimes)}, {len(seeds)})"
        )
    if any(r not in (1, 2, 3) for r in regimes):
        raise UserError(f"regime labels must be 1, 2 or 3, got {sorted(set(regimes))}")
    if any(not (math.isfinite(e) and e > 0) for e in elrs):
        raise UserError("every ELR must be a finite number > 0")
    changes = []
    for s in sorted(set(seeds)):
        pts = sorted((e, r) for e, r, ss in zip(elrs, regimes, seeds, strict=True) if ss == s)
        for (e0, r0), (e1, r1) in zip(pts, pts[1:], strict=False):
            if r0 != r1:
                changes.append({"seed": s, "lo": e0, "hi": e1, "from": r0, "to": r1})
    transitions: dict[str, list[float] | None] = {}
    midpoints: dict[str, float | None] = {}
    for border in BORDERS:
        mine = [ch for ch in changes if {ch["from"], ch["to"]} in _BORDER_PAIRS[border]]
        if not mine:
            transitions[border], midpoints[border] = None, None
            continue
        transitions[border] = [min(ch["lo"] for ch in mine), max(ch["hi"] for ch in mine)]
        mids = [math.log(_geo_mid(ch["lo"], ch["hi"])) for ch in mine]
        midpoints[border] = float(math.exp(sum(mids) / len(mids)))
    return {"transitions": transitions, "midpoints": midpoints, "changes": changes}


__all__ = ["BORDERS", "transition_brackets"]
