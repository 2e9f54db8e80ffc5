"""Adaptive search for the transition ELRs (1/2 and 2/3 borders), on networks and the toy.

:func:`find_transitions` trains rounds of ELR grids with
:func:`three_regimes_jax.studies.sweep.run_sweep`, labels every member with
:func:`three_regimes_jax.analysis.regimes.classify` and zooms into the ELR
intervals where the label changes; the round loop and the zooming rule are in
:mod:`three_regimes_jax.studies.search`.  Pooling the labels of all rounds is
legitimate because a member's init and batch order depend only on its seed, not
on the ELR or the grid it trains in, so the member at ELR ``e`` of round 2 is the
one round 1 would have trained (up to float rounding of the vectorised step).

A search can run as N independent jobs (``find-transitions --shard K/N``, e.g.
a SLURM array), all given the same ``--out DIR``: job K claims and writes only
``DIR/shard_K_of_N/``, trains shard K of each round's grid into its ``round_k/``,
then waits for the other jobs' ``round_k/`` (:func:`wait_for_shards`), joins the
round in memory (:func:`~three_regimes_jax.storage.shards.merged_results`) and
labels it.  Every job thus sees the whole round and picks the same next grid:
each writes the unsharded search's ``transitions.json`` but for its wall times
(with ``map``, the same rounds and borders).  A round with fewer members than N runs as fewer
shards; the jobs past them only wait.

Each border is reported as ``[lo, hi]`` with its geometric midpoint, or as
``None`` with a reason (e.g. every member is regime 1: the 1/2 border lies
above the range).  Compute is accounted in member-epochs (members x epochs,
summed over rounds) and wall seconds (compilation included).

:func:`find_toy_transitions` does the same on the toy function with
:func:`three_regimes_jax.studies.toy.run_toy` (compute in member-steps) and reports the
theory next to it: the 1/2 border is exactly ``1/sum(alpha)`` (eq. 8).  Toy
trajectories are labelled by :func:`three_regimes_jax.studies.toy.classify_toy`,
the toy's one classifier (see its docstring for what the labels mean there).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from three_regimes_jax.analysis.regimes import BORDERS, Criteria, classify
from three_regimes_jax.errors import UserError
from three_regimes_jax.sections_run import shard_of
from three_regimes_jax.storage.files import write_json
from three_regimes_jax.storage.outdir import claim
from three_regimes_jax.storage.results import load_results
from three_regimes_jax.storage.shards import merged_results
from three_regimes_jax.studies import toy
from three_regimes_jax.studies.search import (
    check_int,
    fmt_interval,
    log_grid,
    next_grid,
    parse_elr_range,
    run_search,
    validate_elr_range,
)

if TYPE_CHECKING:
    from three_regimes_jax.config import Config
    from three_regimes_jax.engine.data import Dataset

TRANSITIONS_FILE = "transitions.json"
#: Seconds a shard of a sharded search waits for the other shards of a round
#: (``THREE_REGIMES_SHARD_WAIT_S``, default one day).
SHARD_WAIT_S = float(os.environ.get("THREE_REGIMES_SHARD_WAIT_S", 86400))
#: Seconds between two looks at the other shards' directories.
POLL_S = 2.0


# --------------------------------------------------------------------------- networks


def find_transitions(
    base: Config,
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
    shard: tuple[int, int] | None = None,
    peers: Sequence[str | os.PathLike] | None = None,
    wait_s: float = SHARD_WAIT_S,
) -> dict[str, Any]:
    """Adaptive search for the 1/2 and 2/3 transition ELRs of a network.

    See the module docstring for the zooming rule.  Every round is one
    :func:`~three_regimes_jax.studies.sweep.run_sweep` call: ``base`` with ``elrs`` set
    to the round's grid and ``epochs`` (if given); all of ``base.train.seeds`` run in
    every round.

    Args:
      base: a :class:`~three_regimes_jax.config.Config` (its ``elrs`` are ignored).
      elr_range: ``(lo, hi)``, ``0 < lo < hi``.
      rounds: number of rounds ``>= 1``.
      points: ELRs per round ``>= 2``.
      epochs: epochs per member (default ``base.train.epochs``).
      criteria: classification thresholds (default :class:`Criteria()`).
      progress: tqdm bars of the sweeps and one line per round on stderr.
      out: if given, round ``k`` is written to ``out/round_k`` (a results
        directory each); :func:`run_find_transitions_command` also writes
        ``out/transitions.json``.
      overwrite: passed to ``run_sweep`` for the round directories.
      dataset: an already loaded dataset (else loaded once from ``base``).
      shard: ``(K, N)``: train shard K of N of each round (module docstring).
      peers: with ``shard``: the N jobs' output directories in shard order
        (``out`` is the K-th); each round waits for the others' ``round_k``.
      wait_s: how long a shard waits for the others in each round.

    Returns:
      ``{"transitions": {"1-2": [lo, hi] | None, "2-3": ...}, "midpoints": {...},
      "reasons": {border: str}, "rounds": [{"round", "elrs", "members",
      "transitions", "compute" (member-epochs), "wall_s", "dir"}...],
      "compute": {"member_epochs", "wall_s", "rounds"}, "criteria", "elr_range",
      "points", "epochs", "config"}``.

    Raises:
      UserError: bad range, rounds, points, epochs or config.
    """
    from three_regimes_jax.studies.run import load_data
    from three_regimes_jax.studies.sweep import run_sweep

    lo, hi = validate_elr_range(elr_range)
    rounds = check_int(rounds, "rounds", 1)
    points = check_int(points, "points", 2)
    epochs = check_int(base.train.epochs if epochs is None else epochs, "epochs", 1)
    probe = base.replace(elrs=(lo, hi), epochs=epochs)
    if shard is not None and (out is None or peers is None or len(peers) != shard[1]):
        raise UserError("a sharded search needs its output directory and all N shards' (peers)")
    ds = dataset if dataset is not None else load_data(probe)
    n_seeds = len(probe.train.seeds)
    dirs: list[str | None] = []

    def run_round(k: int, elrs: list[float]) -> tuple[dict[str, Any], int, float]:
        cfg = probe.replace(elrs=tuple(elrs))
        rdir = None if out is None else Path(out) / f"round_{k}"
        dirs.append(None if rdir is None else rdir.name)
        t0 = time.perf_counter()
        if shard is None:
            res = run_sweep(cfg, out=rdir, overwrite=overwrite, progress=progress, dataset=ds)
        else:  # this job's shard, then the others' (a round may have fewer members than N)
            n = min(shard[1], len(elrs) * n_seeds)
            if shard[0] < n:
                part = cfg.replace(shard=f"{shard[0]}/{n}")
                run_sweep(part, out=rdir, overwrite=overwrite, progress=progress, dataset=ds)
            rounds_of = wait_for_shards([Path(p) / f"round_{k}" for p in peers[:n]], wait_s)
            res = merged_results(rounds_of) if n > 1 else load_results(rounds_of[0])
        rep = classify(res.metrics, num_classes=ds.num_classes, criteria=criteria)
        return rep, len(elrs) * n_seeds * epochs, time.perf_counter() - t0

    report = run_search(run_round, (lo, hi), rounds, points, progress)
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
    cfg["train"].pop("elrs", None)
    report["config"] = cfg
    return report


def wait_for_shards(dirs: Sequence[Path], wait_s: float = SHARD_WAIT_S) -> list[Path]:
    """Waits until every directory holds finished results; returns ``dirs``.

    ``config.json`` is the last file a results directory gets
    (:func:`~three_regimes_jax.storage.results.write_results`), so it marks them done.

    Raises:
      UserError: some are still missing after ``wait_s`` seconds (names them).
    """
    deadline, told = time.monotonic() + wait_s, False
    while True:
        missing = [d for d in dirs if not (d / "config.json").is_file()]
        if not missing:
            return list(dirs)
        if time.monotonic() > deadline:
            raise UserError(
                f"the other shards did not finish within {wait_s:g} s: {missing[0]} has no "
                "results; rerun the missing shard (or raise THREE_REGIMES_SHARD_WAIT_S)"
            )
        if not told:
            print(f"three-regimes: waiting for {len(missing)} shard(s), e.g. {missing[0]}",
                  file=sys.stderr)  # fmt: skip
            told = True
        time.sleep(POLL_S)


def run_find_transitions_command(
    base: Config,
    elr_range: Sequence[float],
    rounds: int,
    points: int,
    epochs: int | None,
    out: str | os.PathLike,
    criteria: Criteria | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    shard: str = "",
) -> dict[str, Any]:
    """``three-regimes find-transitions``: search; write ``out/round_k/``, ``out/transitions.json``.

    Everything is checked before training: the arguments, and that ``out`` is
    writable and new, empty, this same search (a rerun), or ``overwrite`` is set.

    Args:
      base: the sweep flags as a :class:`~three_regimes_jax.config.Config`.
      elr_range: ``(lo, hi)``.
      rounds: rounds ``>= 1``.
      points: ELRs per round ``>= 2``.
      epochs: epochs per member (default ``base.train.epochs``).
      out: output directory.
      criteria: classification thresholds.
      overwrite: replace an earlier search in ``out``.
      progress: progress bars and one line per round on stderr.
      shard: ``"K/N"``: this is job K of N sharing ``out`` (module docstring);
        it writes ``out/shard_K_of_N/``.

    Returns:
      The :func:`find_transitions` report (also in ``out/transitions.json``).

    Raises:
      UserError: bad input, or ``out`` unusable, busy or holding something else
        (:func:`~three_regimes_jax.storage.outdir.claim`).
    """
    lo, hi = validate_elr_range(elr_range)
    check_int(rounds, "--rounds", 1)
    check_int(points, "--points", 2)
    check_int(base.train.epochs if epochs is None else epochs, "--epochs", 1)
    base.replace(elrs=(lo, hi))  # checks the ELR range as ELRs
    peers, shard = None, shard_of(shard)
    if shard is not None:
        k, n = shard
        if n > points * len(base.train.seeds):
            raise UserError(
                f"--shard {k}/{n}: a round has {points} ELRs x {len(base.train.seeds)} seeds, "
                "so N can be at most that many"
            )
        peers = [Path(out) / f"shard_{j}_of_{n}" for j in range(n)]
        out = peers[k]
    search = {
        "base": base.to_dict(),
        "elr_range": [lo, hi],
        "rounds": rounds,
        "points": points,
        "epochs": epochs,
    }
    if shard is not None:
        search["shard"] = f"{shard[0]}/{shard[1]}"
    with claim(out, command="find-transitions", config=search, overwrite=overwrite) as out:
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
            shard=shard,
            peers=peers,
        )
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
        where = f"{fmt_interval(iv)}, midpoint {mid:.4g}" if iv is not None else "not found"
        lines.append(f"transition {b}: {where} ({report['reasons'][b]})")
    c = report["compute"]
    unit = "member_epochs" if "member_epochs" in c else "member_steps"
    lines.append(f"compute: {c[unit]} {unit.replace('_', '-')} in {c['wall_s']:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------- toy


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

    Each round is one :func:`~three_regimes_jax.studies.toy.run_toy` call (all ELRs and
    starts vmapped), classified by :func:`~three_regimes_jax.studies.toy.classify_toy`.

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
    rounds = check_int(rounds, "rounds", 1)
    points = check_int(points, "points", 2)
    steps = check_int(steps, "steps", 1)
    c = criteria if criteria is not None else Criteria()

    def run_round(k: int, elrs: list[float]) -> tuple[dict[str, Any], int, float]:
        t0 = time.perf_counter()
        run = toy.run_toy(alphas, elrs, steps, seed=seed, starts=starts)
        rep = toy.classify_toy(run.loss, alphas, elrs, criteria=c)
        return rep, len(elrs) * starts * steps, time.perf_counter() - t0

    report = run_search(run_round, (lo, hi), rounds, points, progress)
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
    "find_toy_transitions",
    "find_transitions",
    "format_transitions",
    "log_grid",
    "next_grid",
    "parse_elr_range",
    "run_find_transitions_command",
    "validate_elr_range",
]
