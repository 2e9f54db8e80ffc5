"""Adaptive search for the transition ELRs (1/2 and 2/3 borders), on networks and the toy.

:func:`find_transitions` trains rounds of ELR grids with
:func:`three_regimes_jax.sweep.run_sweep` and zooms into the ELR intervals where
the regime label (:func:`three_regimes_jax.regimes.classify`) changes:

- round 1 is one vmapped grid of ``points`` log-spaced ELRs over the range
  (including both ends);
- every next round spreads ``points`` new ELRs log-spaced strictly inside the
  current brackets (the endpoints are already known): the brackets of the two
  borders are merged where they overlap (e.g. a direct 1 -> 3 jump gives both
  borders the same bracket), and the points are split evenly
  between the resulting intervals (the first ones get the remainder);
- after every round the brackets are recomputed from the labels of *all*
  rounds pooled.  That is legitimate because a member's init and batch order
  depend only on its seed, not on the ELR or the grid it trains in, so the
  member at ELR ``e`` of round 2 is the one round 1 would have trained (up to
  float rounding of the vectorised step).  Non-monotone labels widen a bracket
  (:func:`~three_regimes_jax.regimes.transition_brackets` takes the union);
- the search stops early when no border is bracketed (nothing to zoom into).

Each border is reported as ``[lo, hi]`` with its geometric midpoint, or as
``None`` with a reason (e.g. every member is regime 1: the 1/2 border lies
above the range).  Compute is accounted in member-epochs (members x epochs,
summed over rounds) and wall seconds (compilation included).

:func:`find_toy_transitions` does the same on the toy function with
:func:`three_regimes_jax.toy.run_toy` (compute in member-steps) and reports the
theory next to it: the 1/2 border is exactly ``1/sum(alpha)`` (eq. 8).
:func:`classify_toy` classifies toy trajectories (see its docstring for what
the labels mean there).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from three_regimes_jax import toy
from three_regimes_jax.errors import UserError
from three_regimes_jax.regimes import BORDERS, Criteria, classify, transition_brackets
from three_regimes_jax.results import check_writable, write_json

if TYPE_CHECKING:
    from three_regimes_jax.data import Dataset
    from three_regimes_jax.sweep import SweepConfig

TRANSITIONS_FILE = "transitions.json"


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
    """Checks ``(lo, hi)``: finite, ``0 < lo < hi``; returns floats."""
    try:
        lo, hi = (float(v) for v in elr_range)
    except (TypeError, ValueError):
        raise UserError(f"the ELR range must be two numbers (lo, hi), got {elr_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise UserError(f"the ELR range must satisfy 0 < lo < hi (finite), got {lo:g},{hi:g}")
    return lo, hi


def _check_int(value: Any, what: str, low: int) -> int:
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


def _search(
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
                + "; ".join(f"{b}: {_fmt(brackets['transitions'][b])}" for b in BORDERS),
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


def _fmt(iv: Sequence[float] | None) -> str:
    return "not found" if iv is None else f"[{iv[0]:.4g}, {iv[1]:.4g}]"


# --------------------------------------------------------------------------- networks


def find_transitions(
    base: SweepConfig,
    elr_range: Sequence[float] = (1e-6, 10.0),
    rounds: int = 3,
    points: int = 8,
    epochs: int | None = None,
    criteria: Criteria | None = None,
    progress: bool = False,
    *,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Adaptive search for the 1/2 and 2/3 transition ELRs of a network.

    See the module docstring for the zooming rule.  Every round is one
    :func:`~three_regimes_jax.sweep.run_sweep` call: ``base`` with ``elrs`` set
    to the round's grid and ``epochs`` (if given); all of ``base.seeds`` run in
    every round.

    Args:
      base: a :class:`~three_regimes_jax.sweep.SweepConfig` (its ``elrs`` are ignored).
      elr_range: ``(lo, hi)``, ``0 < lo < hi``.
      rounds: number of rounds ``>= 1``.
      points: ELRs per round ``>= 2``.
      epochs: epochs per member (default ``base.epochs``).
      criteria: classification thresholds (default :class:`Criteria()`).
      progress: tqdm bars of the sweeps and one line per round on stderr.
      out: if given, round ``k`` is written to ``out/round_k`` (a results
        directory each); :func:`run_find_transitions_command` also writes
        ``out/transitions.json``.
      overwrite: passed to ``run_sweep`` for the round directories.
      dataset: an already loaded dataset (else loaded once from ``base``).

    Returns:
      ``{"transitions": {"1-2": [lo, hi] | None, "2-3": ...}, "midpoints": {...},
      "reasons": {border: str}, "rounds": [{"round", "elrs", "members",
      "transitions", "compute" (member-epochs), "wall_s", "dir"}...],
      "compute": {"member_epochs", "wall_s", "rounds"}, "criteria", "elr_range",
      "points", "epochs", "config"}``.

    Raises:
      UserError: bad range, rounds, points, epochs or config.
    """
    from three_regimes_jax.sweep import load_sweep_data, run_sweep

    lo, hi = validate_elr_range(elr_range)
    rounds = _check_int(rounds, "rounds", 1)
    points = _check_int(points, "points", 2)
    epochs = _check_int(base.epochs if epochs is None else epochs, "epochs", 1)
    probe = dataclasses.replace(base, elrs=(lo, hi), epochs=epochs).validate()
    ds = dataset if dataset is not None else load_sweep_data(probe)
    n_seeds = len(probe.seeds)
    dirs: list[str | None] = []

    def run_round(k: int, elrs: list[float]) -> tuple[dict[str, Any], int, float]:
        cfg = dataclasses.replace(probe, elrs=tuple(elrs))
        rdir = None if out is None else Path(out) / f"round_{k}"
        dirs.append(None if rdir is None else rdir.name)
        t0 = time.perf_counter()
        res = run_sweep(cfg, out=rdir, overwrite=overwrite, progress=progress, dataset=ds)
        rep = classify(res.metrics, num_classes=ds.num_classes, criteria=criteria)
        return rep, len(elrs) * n_seeds * epochs, time.perf_counter() - t0

    report = _search(run_round, (lo, hi), rounds, points, progress)
    for r, d in zip(report["rounds"], dirs, strict=True):
        r["member_epochs"] = r.pop("compute")
        r["dir"] = d
    report["compute"] = {
        "member_epochs": sum(r["member_epochs"] for r in report["rounds"]),
        "wall_s": round(sum(r["wall_s"] for r in report["rounds"]), 3),
        "rounds": len(report["rounds"]),
    }
    report["epochs"] = epochs
    cfg = probe.to_dict()
    cfg.pop("elrs", None)
    report["config"] = cfg
    return report


def run_find_transitions_command(
    base: SweepConfig,
    elr_range: Sequence[float],
    rounds: int,
    points: int,
    epochs: int | None,
    out: str | os.PathLike,
    criteria: Criteria | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """``three-regimes find-transitions``: search; write ``out/round_k/``, ``out/transitions.json``.

    Everything is checked before training: the arguments, and that ``out`` is
    writable and either new, empty, or ``overwrite`` is set.

    Args:
      base: the sweep flags as a :class:`~three_regimes_jax.sweep.SweepConfig`.
      elr_range: ``(lo, hi)``.
      rounds: rounds ``>= 1``.
      points: ELRs per round ``>= 2``.
      epochs: epochs per member (default ``base.epochs``).
      out: output directory.
      criteria: classification thresholds.
      overwrite: replace an earlier search in ``out``.
      progress: progress bars and one line per round on stderr.

    Returns:
      The :func:`find_transitions` report (also in ``out/transitions.json``).

    Raises:
      UserError: bad input, or ``out`` unusable / holding other files.
    """
    lo, hi = validate_elr_range(elr_range)
    _check_int(rounds, "--rounds", 1)
    _check_int(points, "--points", 2)
    _check_int(base.epochs if epochs is None else epochs, "--epochs", 1)
    dataclasses.replace(base, elrs=(lo, hi)).validate()
    out = check_writable(out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(
            f"--out {out} is not empty; pick a new directory or pass --overwrite to replace it"
        )
    report = find_transitions(
        base,
        (lo, hi),
        rounds,
        points,
        epochs,
        criteria,
        progress,
        out=out,
        overwrite=overwrite,
    )
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / TRANSITIONS_FILE, report)
    return report


def format_transitions(report: dict[str, Any]) -> str:
    """A few lines for the terminal: each round's labels, then the borders and compute."""
    lines = []
    for r in report["rounds"]:
        labels = " ".join(f"{m['elr']:.3g}:{m['regime']}" for m in r["members"])
        lines.append(f"round {r['round']}: {labels}")
    for b in BORDERS:
        iv, mid = report["transitions"][b], report["midpoints"].get(b)
        where = f"{_fmt(iv)}, midpoint {mid:.4g}" if iv is not None else "not found"
        lines.append(f"transition {b}: {where} ({report['reasons'][b]})")
    c = report["compute"]
    unit = "member_epochs" if "member_epochs" in c else "member_steps"
    lines.append(f"compute: {c[unit]} {unit.replace('_', '-')} in {c['wall_s']:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- toy


def toy_chance_loss(alphas: Any) -> float:
    """The toy's random-guess level: the mean of ``F`` over the sphere, ``sum(alpha) / 2``.

    Each ``x_i^2 / (x_i^2 + y_i^2)`` of a uniform point on the sphere has mean 1/2.
    """
    return float(np.sum(toy.validate_alphas(alphas))) / 2.0


def classify_toy(
    loss: Any, alphas: Any, elrs: Any, criteria: Criteria | None = None
) -> dict[str, Any]:
    """Classifies toy trajectories into the paper's three regimes.

    The curves are classified by :func:`~three_regimes_jax.regimes.classify`
    with only a loss (no accuracy): steps play the role of epochs (step ``t``
    is time ``t + 1``) and the random-guess level is :func:`toy_chance_loss`,
    ``sum(alpha)/2``.  What the labels mean on the toy:

    - 1: ``F`` falls to 0 (below ``converged_loss``, or low and still
      falling): below the threshold ``1/sum(alpha)`` of eq. 8.
    - 2: ``F`` stays at a level away from the random level, whether it is
      *settled* (constant, the eq. 9 2-cycles, ``observed_regime`` code 2) or
      *chaotic* (fluctuating, ``observed_regime`` code 3 "not settled"):
      the paper's regime 2 is a chaotic equilibrium, and on the toy the
      time-mean level still follows eq. 25, ``(sum(alpha) - 1/elr)/2``.  This
      agrees with :func:`~three_regimes_jax.toy.predicted_regime`.  E.g.
      ``alpha = (1, 2, 4)``: ELR 0.1 -> 1, 0.2 -> 2 (settled at 1.0), 0.5 ->
      2 (chaotic around 2.5).
    - 3: the mean of ``F`` is within ``1 - chance_loss_frac`` of the random
      level.  The theory has no regime 3 on the toy (it is an ``elr -> inf``
      limit, see ``predicted_regime``); with eq. 25 this label starts at
      ``elr = 1 / ((1 - chance_loss_frac) * sum(alpha))`` (10/7 for (1, 2, 4)
      with the default 0.9), a border set by the convention, not by physics.

    Each member's reason ends with the theory for its ELR.

    Args:
      loss: ``[E, T]`` or ``[E, S, T]`` trajectories (``ToyRun.loss``).
      alphas: ``[n]`` weights.
      elrs: ``[E]`` ELRs.
      criteria: thresholds (default :class:`Criteria()`).

    Returns:
      The :func:`~three_regimes_jax.regimes.classify` report; members are
      ELR-major with ``seed`` = start index.
    """
    alphas = toy.validate_alphas(alphas)
    elrs = toy.validate_elrs(elrs)
    loss = np.asarray(loss, np.float64)
    if loss.ndim == 2:
        loss = loss[:, None, :]
    if loss.ndim != 3 or loss.shape[0] != elrs.size:
        raise UserError(
            f"toy loss must have shape [E, T] or [E, S, T] with E = {elrs.size}, got {loss.shape}"
        )
    e, s, t = loss.shape
    metrics = {
        "elr": np.repeat(elrs, s),
        "seed": np.tile(np.arange(s), e),
        "epoch": np.arange(1, t + 1, dtype=np.float64),
        "train_loss": loss.reshape(e * s, t),
    }
    report = classify(
        metrics, criteria=criteria, chance_loss=toy_chance_loss(alphas), time_unit="steps"
    )
    for m in report["members"]:
        pred = toy.predicted_regime(alphas, m["elr"])
        level = toy.regime2_level(alphas, m["elr"])
        m["reason"] += f" [theory: regime {pred}, eq. 25 level {level:.3g}]"
    return report


def find_toy_transitions(
    alphas: Any,
    elr_range: Sequence[float] = (0.01, 1.0),
    rounds: int = 3,
    points: int = 8,
    steps: int = 2000,
    seed: int = 0,
    starts: int = 1,
    criteria: Criteria | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Adaptive search for the toy's transition ELRs (the loop of :func:`find_transitions`).

    Each round is one :func:`~three_regimes_jax.toy.run_toy` call (all ELRs and
    starts vmapped), classified by :func:`classify_toy`.

    Args:
      alphas: ``[n]`` weights.
      elr_range: ``(lo, hi)``.
      rounds: rounds ``>= 1``.
      points: ELRs per round ``>= 2``.
      steps: steps per trajectory.
      seed: seed of the random starts (shared by all rounds).
      starts: random starts per ELR (they play the role of seeds).
      criteria: thresholds (default :class:`Criteria()`).
      progress: one line per round on stderr.

    Returns:
      As :func:`find_transitions`, with ``compute`` in ``member_steps`` and
      ``theory``: ``{"1-2": 1/sum(alpha)`` (eq. 8), ``"2-3": None`` (no
      regime 3 in the theory), ``"2-3_label": 1/((1 - chance_loss_frac) *
      sum(alpha))`` (where eq. 25 reaches the regime-3 label's level)``}``.
    """
    alphas = toy.validate_alphas(alphas)
    lo, hi = validate_elr_range(elr_range)
    rounds = _check_int(rounds, "rounds", 1)
    points = _check_int(points, "points", 2)
    steps = _check_int(steps, "steps", 1)
    c = criteria if criteria is not None else Criteria()

    def run_round(k: int, elrs: list[float]) -> tuple[dict[str, Any], int, float]:
        t0 = time.perf_counter()
        run = toy.run_toy(alphas, elrs, steps, seed=seed, starts=starts)
        rep = classify_toy(run.loss, alphas, elrs, criteria=c)
        return rep, len(elrs) * starts * steps, time.perf_counter() - t0

    report = _search(run_round, (lo, hi), rounds, points, progress)
    for r in report["rounds"]:
        r["member_steps"] = r.pop("compute")
    report["compute"] = {
        "member_steps": sum(r["member_steps"] for r in report["rounds"]),
        "wall_s": round(sum(r["wall_s"] for r in report["rounds"]), 3),
        "rounds": len(report["rounds"]),
    }
    total = float(np.sum(alphas))
    report["theory"] = {
        "1-2": toy.convergence_threshold(alphas),
        "2-3": None,
        "2-3_label": 1.0 / ((1.0 - c.chance_loss_frac) * total) if c.chance_loss_frac < 1 else None,
    }
    report.update(alphas=alphas.tolist(), steps=steps, seed=seed, starts=starts)
    return report


__all__ = [
    "TRANSITIONS_FILE",
    "classify_toy",
    "find_toy_transitions",
    "find_transitions",
    "format_transitions",
    "log_grid",
    "next_grid",
    "parse_elr_range",
    "run_find_transitions_command",
    "toy_chance_loss",
    "validate_elr_range",
]
