"""The ``three-regimes toy`` command: simulate the toy, compare with theory, write the data.

``run_toy_command(alphas, elrs, steps, seed, starts, out)`` validates every
input *before* creating anything, runs :func:`three_regimes_jax.studies.toy.run_toy`,
builds everything in memory and only then writes, each file atomically (a
temporary file in ``out`` renamed over the target), so a failure never leaves a
half-written file and bad input leaves no trace (``out`` is not created).

Files written to ``out`` (:data:`TOY_FILES`):

``toy.npz``
  ``alphas`` [n]; ``elr`` [E]; ``loss`` [E, T] and ``group_elr`` [E, T, n] for
  start 0; ``loss_all_starts`` [E, S, T]; ``equilibrium_group_elr`` [E, n]
  (eq. 9); ``predicted_level`` [E]; ``threshold`` (scalar, eq. 8).  Index ``t``
  is the state after ``t`` steps, ``t = 0 .. T-1`` (see
  :class:`~three_regimes_jax.studies.toy.ToyRun`).
``summary.json``
  The dict returned, see :func:`run_toy_command`.

The library draws nothing: the figures (``toy_loss.png``, paper Fig. 2, and
``toy_group_elr.png``, Fig. 8) are drawn from ``toy.npz`` by
``plotting.toy.write_toy_figures(out)``, which the command line calls next.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from three_regimes_jax.storage.files import atomic_write, npz_bytes
from three_regimes_jax.storage.outdir import check_out_path
from three_regimes_jax.studies import toy

#: Names of the files the command writes, in writing order (data only, no figures).
TOY_FILES = ("toy.npz", "summary.json")


def _summary(run: toy.ToyRun, steps: int, seed: int, starts: int) -> dict[str, Any]:
    threshold = toy.convergence_threshold(run.alphas)
    mean_loss = toy.mean_second_half(run.loss, axis=2)  # [E, S]
    mean_gelr = toy.mean_second_half(run.group_elr, axis=2)  # [E, S, n]
    labels = [m["regime"] for m in toy.classify_toy(run.loss, run.alphas, run.elrs)["members"]]
    runs = []
    for e, elr in enumerate(run.elrs.tolist()):
        observed = labels[e * starts : (e + 1) * starts]  # ELR-major, one label per start
        runs.append(
            {
                "elr": elr,
                "regime_theory": toy.predicted_regime(run.alphas, elr),
                "regime_observed": observed[0],
                "regime_observed_all_starts": observed,
                "final_loss": float(run.final_loss[e, 0]),
                "mean_loss_second_half": float(mean_loss[e, 0]),
                "predicted_level": toy.regime2_level(run.alphas, elr),
                "mean_group_elr_second_half": [float(v) for v in mean_gelr[e, 0]],
                "equilibrium_group_elr": toy.equilibrium_group_elr(run.alphas, elr).tolist(),
            }
        )
    return {
        "alphas": run.alphas.tolist(),
        "elrs": run.elrs.tolist(),
        "steps": steps,
        "seed": seed,
        "starts": starts,
        "threshold": threshold,
        "regime_observed_codes": {str(k): v for k, v in toy.REGIME_LABELS.items()},
        "files": list(TOY_FILES),
        "runs": runs,
    }


def run_toy_command(
    alphas: Sequence[float],
    elrs: Sequence[float],
    steps: int,
    seed: int,
    starts: int,
    out: str | os.PathLike[str],
) -> dict[str, Any]:
    """Runs the toy experiment and writes its data files to ``out`` (no figures).

    Args:
      alphas: ``[n]`` group weights, finite and > 0.
      elrs: ``[E]`` ELRs, finite and > 0.
      steps: iterations ``T >= 1``.
      seed: seed of the random starts, in ``[0, 2**32 - 1]``.
      starts: number of random starts ``S >= 1`` (shared by all ELRs).
      out: output directory (created if missing, parents too).

    Returns:
      The summary written to ``summary.json``:

      * ``alphas``, ``elrs``, ``steps``, ``seed``, ``starts``: the inputs;
      * ``threshold``: ``1 / sum(alpha)`` (eq. 8);
      * ``regime_observed_codes``: meaning of the observed regime labels 1-3
        (:data:`~three_regimes_jax.studies.toy.REGIME_LABELS`);
      * ``files``: the files written;
      * ``runs``: one dict per ELR with ``elr``; ``regime_theory``
        (:func:`~three_regimes_jax.studies.toy.predicted_regime`: 1 or 2);
        ``regime_observed`` (start 0) and ``regime_observed_all_starts`` [S]
        (:func:`~three_regimes_jax.studies.toy.classify_toy`: 1, 2 or 3);
        ``final_loss`` (``F`` after ``steps`` steps, start 0);
        ``mean_loss_second_half`` (mean ``F`` over ``t >= T // 2``, start 0);
        ``predicted_level`` (``(sum(alpha) - 1/elr) / 2`` above the threshold,
        else 0.0; Prop. 1's level for ``n = 1``);
        ``mean_group_elr_second_half`` [n] (start 0) and
        ``equilibrium_group_elr`` [n] (eq. 9).

    Raises:
      UserError: on any invalid input, before anything is created.
    """
    alphas, elrs, steps, seed, starts = toy.validate_run_args(alphas, elrs, steps, seed, starts)
    out_dir = check_out_path(out)

    run = toy.run_toy(alphas, elrs, steps, seed=seed, starts=starts)
    summary = _summary(run, steps, seed, starts)

    threshold = summary["threshold"]
    equilibrium = np.stack([toy.equilibrium_group_elr(alphas, e) for e in elrs])
    arrays = {
        "alphas": alphas,
        "elr": elrs,
        "loss": run.loss[:, 0],
        "group_elr": run.group_elr[:, 0],
        "loss_all_starts": run.loss,
        "equilibrium_group_elr": equilibrium,
        "predicted_level": np.array([r["predicted_level"] for r in summary["runs"]]),
        "threshold": np.array(threshold),
    }
    payload = {
        "toy.npz": npz_bytes(arrays),
        "summary.json": (json.dumps(summary, indent=2) + "\n").encode(),
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in TOY_FILES:
        atomic_write(out_dir / name, payload[name])
    return summary
