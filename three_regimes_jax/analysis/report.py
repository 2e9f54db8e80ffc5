"""Regimes of a results directory: classify it, write ``regimes.json``, format a table.

:func:`run_regimes_command` is ``three-regimes regimes DIR``.  The
classification itself is :func:`three_regimes_jax.analysis.regimes.classify`;
this module adds the directory IO (through :mod:`three_regimes_jax.storage.results`)
and the plain-text table.  numpy only, no JAX.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from three_regimes_jax.analysis.borders import BORDERS
from three_regimes_jax.analysis.regimes import Criteria, classify
from three_regimes_jax.analysis.stats import as_2d
from three_regimes_jax.config import Config, flat_names
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.outdir import check_not_busy, check_out_path
from three_regimes_jax.storage.results import load_results, write_json
from three_regimes_jax.storage.shards import load_runs

REGIMES_FILE = "regimes.json"


def _dataset_of(config: Mapping[str, Any]) -> str | None:
    """The dataset of a ``config.json`` in either layout, None if it names none.

    Read with :meth:`Config.from_dict` (the nested layout, or the flat one of
    format 1, fine-tunes included); a config it refuses is searched by hand.
    """
    try:
        return Config.from_dict(config).data.dataset
    except (UserError, TypeError, ValueError):
        pass
    if not isinstance(config, Mapping):
        return None
    for cfg in (config, config.get("source_config")):
        if not isinstance(cfg, Mapping):
            continue
        data = cfg.get("data")
        if isinstance(data, Mapping) and isinstance(data.get("dataset"), str):
            return data["dataset"]
        if isinstance(cfg.get("dataset"), str):
            return cfg["dataset"]
    return None


def num_classes_of(config: Mapping[str, Any]) -> int:
    """Classes of a run's dataset: 100 for ``cifar100``, else 10.

    Reads both ``config.json`` layouts: the nested one (``data.dataset``) and
    the flat one of format 1 (``dataset``, or ``source_config.dataset`` for a
    fine-tune).
    """
    return 100 if _dataset_of(config) == "cifar100" else 10


def classify_dir(
    path: str | os.PathLike,
    criteria: Criteria | None = None,
    random_walk: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Classifies every member of a results directory (see :func:`classify`).

    Args:
      path: a results directory (``config.json``, ``metrics.npz``, ``summary.json``).
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: optional results directory of the random-walk baseline
        (``three-regimes sweep --random-walk``) at the same ELRs.

    Returns:
      The :func:`classify` report.

    Raises:
      UserError: ``path`` is not a complete, readable, writable results
        directory, or is being written; ``random_walk`` is not its
        random-walk twin.
    """
    res = load_results(path)
    rw = load_results(random_walk).metrics if random_walk is not None else None
    return classify(
        res.metrics, num_classes=num_classes_of(res.config), criteria=criteria, random_walk=rw
    )


def write_regimes(path: str | os.PathLike, report: Mapping[str, Any]) -> Path:
    """Writes ``report`` to ``path/regimes.json`` atomically; returns the file path."""
    out = Path(path) / REGIMES_FILE
    write_json(out, dict(report))
    return out


def _fmt_bracket(b: Iterable[float] | None, mid: float | None) -> str:
    if b is None:
        return "not found"
    lo, hi = b
    return f"[{lo:.3g}, {hi:.3g}] (geometric midpoint {mid:.3g})"


def format_regimes(report: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> str:
    """Plain-text table of a :func:`classify` report, one row per member.

    Columns: ELR, seed, regime label, confidence, final train loss, test error
    (the last two from ``metrics`` when given) and the reason (last, as it has
    no fixed width), then one line per border.
    """
    loss = test_acc = None
    if metrics is not None:
        loss = as_2d(metrics["train_loss"], "train_loss") if "train_loss" in metrics else None
        test_acc = as_2d(metrics["test_acc"], "test_acc") if "test_acc" in metrics else None
    head = f"{'ELR':>10} {'seed':>5} {'label':>5} {'conf':>5} {'train loss':>11} {'test error':>11}"
    lines = [head + "  reason", "-" * (len(head) + 8)]
    for i, m in enumerate(report["members"]):
        tl = f"{loss[i, -1]:>11.4g}" if loss is not None else f"{'-':>11}"
        te = f"{1.0 - test_acc[i, -1]:>11.4f}" if test_acc is not None else f"{'-':>11}"
        lines.append(
            f"{m['elr']:>10.3g} {m['seed']:>5d} {m['regime']:>5d} {m['confidence']:>5.2f} "
            f"{tl} {te}  {m['reason']}"
        )
    mids = report.get("midpoints", {})
    for border in BORDERS:
        lines.append(
            f"transition {border}: {_fmt_bracket(report['transitions'][border], mids.get(border))}"
        )
    return "\n".join(lines)


# Flat config names a random-walk baseline may differ in from its regular run.
_RW_FREE = {"random_walk", "random_walk_from", "strategy", "precision", "data_dir"}


def check_random_walk_pair(
    config: Any,
    rw_config: Any,
    *,
    regular: str,
    walk: str,
    free: Iterable[str] = (),
) -> None:
    """Checks that two results are a regular run and its random-walk twin (App. M).

    Args:
      config: the regular run's config (either ``config.json`` layout).
      rw_config: the random walk's config.
      regular: how to name the regular run in errors (e.g. ``"--random-walk-from DIR"``).
      walk: how to name the random walk in errors.
      free: flat fields that may differ besides the random-walk ones (e.g. a
        random walk may cover fewer ELRs or epochs than its reference).

    Raises:
      UserError: the walk was not made with ``--random-walk``, the regular run
        was, or they differ in model, data or training.
    """
    try:
        run, rw = Config.from_dict(config), Config.from_dict(rw_config)
    except UserError as e:
        raise UserError(f"{walk}: cannot compare the configs ({e})") from None
    if not rw.train.random_walk:
        raise UserError(
            f"{walk} is not a random-walk run (it was made without --random-walk); "
            "pass the results of the same grid run with --random-walk"
        )
    if run.train.random_walk:
        raise UserError(f"{regular} is itself a random walk; pass the regular run")
    fa, fb = run.to_flat(), rw.to_flat()
    names = set(flat_names()) - _RW_FREE - set(free)
    sections = {"model", "data", "train"}
    diff = sorted(
        k
        for k in names
        if flat_names()[k][0] in sections and k in fa and k in fb and fa[k] != fb[k]
    )
    if diff:
        raise UserError(
            f"{walk} and {regular} are not the same run (differs in: {', '.join(diff)}); "
            "a random walk needs the regular run's model, data and training flags"
        )


def run_regimes_command(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    criteria: Criteria | None = None,
    random_walk: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], str]:
    """``three-regimes regimes DIR``: classify, write ``DIR/regimes.json``, make the table.

    Args:
      path: results directory, or the shard directories of one run
        (``sweep --shard K/N``), joined in memory.
      criteria: thresholds (default :class:`Criteria()`).
      random_walk: optional random-walk baseline results directory.
      out: where ``regimes.json`` goes (default: ``path``); required for shards.

    Returns:
      ``(report, table_text)``.

    Raises:
      UserError: ``path`` is not a complete, readable, writable results
        directory, or is being written; ``random_walk`` is not its
        random-walk twin; shards that are not one complete run.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    for p in paths:
        check_not_busy(p)
    runs = load_runs(paths)
    if len(runs) != 1:
        raise UserError(
            f"regimes classifies one run: give one results directory or the shards of one "
            f"run, not {len(runs)} runs"
        )
    (dirs, res), path = runs[0], Path(paths[0])
    if out is None and len(dirs) > 1:
        raise UserError("regimes of shard directories writes regimes.json to --out DIR: add it")
    wds = sorted({float(w) for w in res.metrics.get("weight_decay", [])})
    if len(wds) > 1:
        raise UserError(
            f"{path} sweeps several weight decays ({', '.join(f'{w:g}' for w in wds)}); "
            "regimes compares the LRs of one weight decay: run one sweep per weight decay"
        )
    dest = path if out is None else check_out_path(out)
    if dest.exists() and not os.access(dest, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {dest / REGIMES_FILE}: {dest} is not writable")
    rw = None
    if random_walk is not None:
        rw_res = load_results(random_walk)
        check_random_walk_pair(
            res.config, rw_res.config, regular=str(path), walk=f"--random-walk {random_walk}"
        )
        rw = rw_res.metrics
    report = classify(
        res.metrics, num_classes=num_classes_of(res.config), criteria=criteria, random_walk=rw
    )
    dest.mkdir(parents=True, exist_ok=True)
    write_regimes(dest, report)
    return report, format_regimes(report, res.metrics)


__all__ = [
    "REGIMES_FILE",
    "classify_dir",
    "format_regimes",
    "num_classes_of",
    "check_random_walk_pair",
    "run_regimes_command",
    "write_regimes",
]
