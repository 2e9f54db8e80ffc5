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

Every file is written atomically (temporary file in ``DIR``, then
``os.replace``), so an interrupted run never leaves a partial file.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError

FORMAT_VERSION = 1
FILES = ("config.json", "metrics.npz", "summary.json")


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
        check_out_dir(out, self.config, overwrite)
        return write_results(out, self.config, self.metrics, self.summary)

    def table(self) -> str:
        """Plain-text table, one row per member: final losses, test error, eff. grad norm."""
        return format_table(self.summary["members"])


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically: a temporary file beside it, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON."""
    atomic_write(path, _json_bytes(obj))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` whose bytes depend only on the arrays.

    ``np.savez`` stamps each zip entry with the current time, so two runs with
    equal arrays give different files; here every entry has a fixed timestamp,
    so equal results give byte-identical files (e.g. a resumed run).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Atomically writes a deterministic compressed ``.npz`` (see :func:`npz_bytes`)."""
    atomic_write(path, npz_bytes(arrays))


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

    Raises:
      UserError: ``out`` is a file, or its nearest existing ancestor is not a
        writable directory.
    """
    out = Path(out)
    if not str(out):
        raise UserError("--out is empty; give a directory path")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a directory path")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out} cannot be written ({probe} is a file); pick another")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out} cannot be written ({probe} is not writable); pick another")
    return out


def check_out_dir(out: str | os.PathLike, config: dict[str, Any], overwrite: bool) -> None:
    """Checks, before any work, that ``out`` can receive this run's results.

    Raises:
      UserError: ``out`` is a file, is not writable, or already holds a
        different run (or unrelated files) and ``overwrite`` is False.
    """
    out = check_writable(out)
    if not out.is_dir() or overwrite or not any(out.iterdir()):
        return
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        raise UserError(
            f"--out {out} is not empty and holds no run; pick an empty or new directory "
            "or pass --overwrite"
        )
    try:
        old = json.loads(cfg_path.read_text())
    except (OSError, ValueError):
        old = {}
    diff = config_diff(old, config)
    if diff:
        raise UserError(
            f"--out {out} already holds a different run (differs in: {', '.join(diff)}); "
            "pick another --out or pass --overwrite"
        )


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
    write_npz(out / "metrics.npz", metrics)
    write_json(out / "summary.json", summary)
    write_json(out / "config.json", config)
    return out


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
        summary = json.loads((path / "summary.json").read_text())
        with np.load(path / "metrics.npz", allow_pickle=False) as z:
            metrics = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read results in {path}: {e}") from None
    return Results(config=config, metrics=metrics, summary=summary)


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
