"""The results directory: one documented format, read by plotting and notebooks.

A results directory ``DIR`` holds:

- ``DIR/config.json``: the run's configuration (``SweepConfig.to_dict()``) plus
  ``"kind"`` (e.g. ``"sweep"``) and ``"format_version"``.
- ``DIR/metrics.npz``: arrays with the grid axis G first and the epoch axis T
  second: ``elr`` [G], ``seed`` [G], ``epoch`` [T] (1-based: values after that
  many epochs), ``train_loss``, ``train_acc`` (train-mode BN pass over the
  training set), ``test_loss``, ``test_acc`` (eval-mode BN), ``eff_grad_norm``
  (mean over the epoch's mini-batches of ``||grad L_B|| * ||theta_SI||``),
  ``si_norm``, ``batch_loss``, ``batch_acc`` [G, T]; ``group_elr``,
  ``group_eff_grad_norm``, ``group_ess`` [G, T, n_groups] (epoch means);
  ``group_names`` [n_groups]; ``diverged`` [G] (bool) and ``diverged_epoch``
  [G] (first non-finite epoch, -1 if none).  Metrics of a diverged member are
  NaN from its first non-finite epoch on.
- ``DIR/summary.json``: final values per member (``members`` list) and run
  facts (wall time, strategy, backend).
- ``DIR/MANIFEST.sha256``: the SHA-256 of ``metrics.npz`` and
  ``summary.json`` (:mod:`~three_regimes_jax.storage.integrity`), written
  after them and before ``config.json``; ``config.json`` has
  ``"results_format": 2``.  Directories of results format 1 (no manifest) are
  read unverified.

Every file is written atomically (temporary file in ``DIR``, then
``os.replace``), and ``config.json`` last, so a directory with a
``config.json`` has complete, checksummed results beside it.
:func:`load_results` verifies the checksums and validates the arrays'
names, shapes and dtypes against the config, so damaged results are one
clear error, never a plot of garbage.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.files import (  # re-exported: results' writers
    atomic_write as atomic_write,
)
from three_regimes_jax.storage.files import npz_bytes as npz_bytes
from three_regimes_jax.storage.files import write_json as write_json
from three_regimes_jax.storage.files import write_npz as write_npz
from three_regimes_jax.storage.integrity import MANIFEST, verify_manifest, write_manifest
from three_regimes_jax.storage.outdir import check_out_path, claim

FORMAT_VERSION = 2  # 2: MANIFEST.sha256 beside the data
FILES = ("config.json", "metrics.npz", "summary.json")
CERTIFIED = ("metrics.npz", "summary.json")  # listed in the manifest
# Arrays every results directory has, and arrays checked when present:
# name -> (dims, dtype kinds), dims "G" (members) and "T" (epochs), kinds as
# numpy's ``dtype.kind``.
REQUIRED_ARRAYS = {
    "elr": ("G", "f"),
    "seed": ("G", "iu"),
    "epoch": ("T", "iu"),
    "train_loss": ("GT", "f"),
}
# Arrays every run of this package writes (checked for configs of format 2).
RUN_ARRAYS = (
    "train_acc",
    "test_loss",
    "test_acc",
    "eff_grad_norm",
    "si_norm",
    "diverged",
    "diverged_epoch",
)
CHECKED_ARRAYS = {
    **REQUIRED_ARRAYS,
    **{k: ("GT", "f") for k in ("train_acc", "test_loss", "test_acc", "eff_grad_norm", "si_norm")},
    "diverged": ("G", "b"),
    "diverged_epoch": ("G", "iu"),
}


@dataclasses.dataclass
class Results:
    """A run's configuration, per-epoch metrics and final summary.

    Attributes:
      config: the configuration dict (as in ``config.json``).
      metrics: name -> numpy array (as in ``metrics.npz``).
      summary: final values per member (as in ``summary.json``).
      state: the final ``GridState`` when the run was made in this process.
    """

    config: dict[str, Any]
    metrics: dict[str, np.ndarray]
    summary: dict[str, Any]
    state: Any = None

    def save(self, out: str | os.PathLike, overwrite: bool = False) -> Path:
        """Writes the results directory (see module docstring); returns its path."""
        kind = str(self.config.get("kind", "sweep"))
        with claim(out, command=kind, config=self.config, overwrite=overwrite, differ=config_diff):
            return write_results(out, self.config, self.metrics, self.summary)

    def table(self) -> str:
        """Plain-text table, one row per member: final losses, test error, eff. grad norm."""
        return format_table(self.summary["members"])


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Sorted keys whose values differ between two dicts (nested ones as ``a.b``)."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k)]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d} if prefix else {"": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(a: Any, b: Any) -> list[str]:
    """The flags in which two run configs differ (either ``config.json`` layout).

    Both are read with :meth:`Config.from_dict
    <three_regimes_jax.config.Config.from_dict>`, so a results directory
    written before the config tree compares equal to the same run today;
    an unreadable config differs in everything (``["config"]``).
    """
    try:
        fa, fb = (Config.from_dict(c).to_flat() for c in (a, b))
    except UserError:
        return differing_keys(a, b) if isinstance(a, dict) and isinstance(b, dict) else ["config"]
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def check_writable(out: str | os.PathLike) -> Path:
    """Checks, creating nothing, that directory ``out`` exists or can be created.

    See :func:`~three_regimes_jax.storage.outdir.check_out_path`.
    """
    return check_out_path(out)


def write_results(
    out: str | os.PathLike,
    config: dict[str, Any],
    metrics: dict[str, np.ndarray],
    summary: dict[str, Any],
) -> Path:
    """Writes ``config.json``, ``metrics.npz`` and ``summary.json`` atomically.

    Metrics go first and the config last, so a directory with a config always
    has complete metrics next to it.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # An earlier run's config.json and manifest go first, so no moment shows
    # a config beside results that are not its own.
    for name in ("config.json", MANIFEST):
        (out / name).unlink(missing_ok=True)
    try:
        write_npz(out / "metrics.npz", metrics)
        write_json(out / "summary.json", summary)
        write_manifest(out, CERTIFIED)
        write_json(out / "config.json", {**config, "results_format": FORMAT_VERSION})
    except BaseException:
        for name in (*FILES, MANIFEST):
            (out / name).unlink(missing_ok=True)
        raise
    return out


def validate_metrics(path: Path, config: dict[str, Any], metrics: dict[str, np.ndarray]) -> None:
    """Checks the arrays of ``metrics.npz`` against each other and ``config.json``.

    Raises:
      UserError: a required array is missing or has the wrong rank, length or
        dtype; or the grid size or last epoch disagree with the config.
    """
    where = f"{path / 'metrics.npz'}"
    missing = [k for k in REQUIRED_ARRAYS if k not in metrics]
    if missing:
        raise UserError(f"{where} lacks the array(s) {', '.join(missing)}; recompute the run")
    g, t = metrics["elr"].shape[:1], metrics["epoch"].shape[:1]
    sizes = {"G": g[0] if g else -1, "T": t[0] if t else -1}
    for name, (dims, kinds) in CHECKED_ARRAYS.items():
        if name not in metrics:
            continue
        a = metrics[name]
        want = tuple(sizes[d] for d in dims)
        if a.shape != want or a.dtype.kind not in kinds:
            raise UserError(
                f"{where}: array {name} has shape {a.shape} and dtype {a.dtype}, expected "
                f"shape {want} ({'x'.join(dims)}) of kind {kinds!r}; recompute the run"
            )
    if sizes["G"] < 1 or sizes["T"] < 1:
        raise UserError(f"{where} holds no members or no epochs; recompute the run")
    train = config.get("train")
    if not isinstance(train, dict) or "epochs" not in train:
        return  # a hand-made or format-1 config: nothing to compare with
    missing = [k for k in RUN_ARRAYS if k not in metrics]
    if missing:
        raise UserError(f"{where} lacks the array(s) {', '.join(missing)}; recompute the run")
    try:
        cfg = Config.from_dict(config)
    except UserError as e:
        raise UserError(f"{path / 'config.json'} is not a valid config: {e}") from None
    last = int(metrics["epoch"][-1])
    if last != cfg.end_epoch:
        raise UserError(
            f"{where} ends at epoch {last} but config.json says {cfg.end_epoch}; the files "
            "are from different runs: recompute the run"
        )
    if cfg.finetune is None:
        n = cfg.grid_size
        if n != sizes["G"]:
            raise UserError(
                f"{where} has {sizes['G']} members but config.json describes {n}; the files "
                "are from different runs: recompute the run"
            )


def load_results(path: str | os.PathLike) -> Results:
    """Reads a results directory written by :func:`write_results`.

    Raises:
      UserError: a file is missing or unreadable.
    """
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise UserError(
            f"{path} is not a complete results directory (missing {', '.join(missing)}); "
            "run `three-regimes sweep --out DIR` first"
        )
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path / 'config.json'}: {_reason(e)}") from None
    if not isinstance(config, dict):
        raise UserError(
            f"{path / 'config.json'} holds a JSON {type(config).__name__}, not a run's config; "
            "recompute the run"
        )
    if config.get("results_format", 1) >= 2:
        verify_manifest(path, f"the results in {path}")
    try:
        summary = json.loads((path / "summary.json").read_text())
        with np.load(path / "metrics.npz", allow_pickle=False) as z:
            metrics = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip, npy and JSON errors of damaged files
        raise UserError(f"cannot read results in {path}: {_reason(e)}") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("members"), list):
        raise UserError(f"{path / 'summary.json'} is not a run's summary; recompute the run")
    validate_metrics(path, config, metrics)
    return Results(config=config, metrics=metrics, summary=summary)


def _reason(e: BaseException) -> str:
    """One short line for a read error."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def format_table(rows: list[dict[str, Any]]) -> str:
    """Formats summary rows (elr, seed, train_loss, test_acc, eff_grad_norm, diverged)."""
    head = f"{'ELR':>10} {'seed':>5} {'train loss':>11} {'test error':>11} {'eff grad norm':>14}"
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = "  diverged" if r.get("diverged") else ""
        lines.append(
            f"{r['elr']:>10.3g} {r['seed']:>5d} {r['train_loss']:>11.4g} "
            f"{1.0 - r['test_acc']:>11.4f} {r['eff_grad_norm']:>14.4g}{flag}"
        )
    return "\n".join(lines)
