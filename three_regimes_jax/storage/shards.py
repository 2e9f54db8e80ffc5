"""Shards of a grid (``sweep --shard K/N``): checking they belong together, joining results.

:func:`merged_results` returns the unsharded run's results from its N shard
directories, in memory: per-member arrays concatenated in shard order, shared
arrays (epochs, group names, ...) checked equal and kept once.
:func:`load_runs` loads a list of results directories, with the shards of one
run joined, for commands that accept shard directories directly (``regimes``,
``plot``).  Writing a merged directory with its checkpoints is
:func:`three_regimes_jax.studies.merge.merge_shards`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results, config_diff, load_results

#: ``metrics.npz`` arrays that are the same for every member (kept once, checked equal).
SHARED = {
    "epoch",
    "sharpness_epoch",
    "group_names",
    "group_individually_si",
    "filter_group",
    "filter_log_step",
}
#: Arrays indexed by the logged members of ``--filter-log-elrs`` (not by G).
LOGGED = "filter_log_"


def shards_of(
    dirs: Sequence[str | os.PathLike],
) -> list[tuple[tuple[int, int], Config, Results, str]]:
    """Each directory's ``(K, N)``, config and results, sorted by K; refuses mismatches."""
    if not dirs:
        raise UserError("merge needs the shard directories (one per shard of --shard K/N)")
    found = []
    for d in dirs:
        res = load_results(d)
        config = Config.from_dict(res.config)
        if config.shard is None:
            raise UserError(f"{d} is not a shard: its run has no --shard K/N")
        found.append((config.shard, config, res, str(d)))
    first = found[0]
    n = first[0][1]
    whole = first[1].replace(shard="").to_dict()
    for (k, n_k), config, _, d in found[1:]:
        if n_k != n:
            raise UserError(f"{d} is shard {k}/{n_k}, but {first[3]} is of {n} shards")
        diff = config_diff(config.replace(shard="").to_dict(), whole)
        if diff:
            raise UserError(
                f"{d} and {first[3]} are shards of different runs: they differ in "
                f"{', '.join('--' + k.replace('_', '-') for k in diff)}"
            )
    seen: dict[int, str] = {}
    for (k, _), _, _, d in found:
        if k in seen:
            raise UserError(f"shard {k}/{n} is given twice: {seen[k]} and {d}")
        seen[k] = d
    missing = [k for k in range(n) if k not in seen]
    if missing:
        names = ", ".join(f"{k}/{n}" for k in missing)
        raise UserError(f"shard(s) {names} missing: give all {n} shard directories")
    found.sort(key=lambda f: f[0][0])
    return found


def _merge_metrics(parts: list[dict[str, np.ndarray]], offsets: list[int]) -> dict:
    """Per-member arrays concatenated, shared arrays checked equal; logged members re-indexed."""
    names = list(parts[0])
    for i, p in enumerate(parts[1:], 1):
        if set(p) != set(names):
            diff = sorted(set(p) ^ set(names))
            raise UserError(f"shard {i} has other metrics than shard 0 ({', '.join(diff)})")
    out = {}
    for name in names:
        arrays = [p[name] for p in parts]
        if name in SHARED:
            if any(not np.array_equal(a, arrays[0]) for a in arrays[1:]):
                raise UserError(f"the shards disagree on {name!r}: not shards of one run")
            out[name] = arrays[0]
        elif name == "filter_log_member":
            out[name] = np.concatenate([a + off for a, off in zip(arrays, offsets, strict=True)])
        else:
            out[name] = np.concatenate(arrays, axis=0)
    return out


def merged_results(dirs: Sequence[str | os.PathLike]) -> Results:
    """The unsharded run's results from its N shard directories, in memory (no checkpoints)."""
    return merge_loaded(shards_of(dirs))


def merge_loaded(shards: list[tuple[tuple[int, int], Config, Results, str]]) -> Results:
    """:func:`merged_results` of shards already checked by :func:`shards_of`."""
    config = shards[0][1].replace(shard="")
    sizes = [len(res.metrics["elr"]) for _, _, res, _ in shards]
    offsets = list(np.cumsum([0, *sizes[:-1]]))
    for ((k, n), c, _, _), size in zip(shards, sizes, strict=True):
        start, stop = c.shard_range
        if size != stop - start:
            raise UserError(f"shard {k}/{n} holds {size} members, expected {stop - start}")
    metrics = _merge_metrics([res.metrics for _, _, res, _ in shards], offsets)
    summaries = [res.summary for _, _, res, _ in shards]
    summary = {
        **summaries[0],
        "members": [m for s in summaries for m in s["members"]],
        "wall_time_s": round(sum(float(s["wall_time_s"]) for s in summaries), 3),
        "shards": [
            {
                "shard": c.run.shard,
                "directory": d,
                "wall_time_s": s["wall_time_s"],
                **({"memory": s["memory"]} if "memory" in s else {}),
            }
            for (_, c, _, d), s in zip(shards, summaries, strict=True)
        ],
    }
    summary.pop("memory", None)
    return Results(config=config.to_dict(), metrics=metrics, summary=summary)


def load_runs(paths: Sequence[str | os.PathLike]) -> list[tuple[list[Path], Results]]:
    """Each results directory's results, with the shards of one run merged into one entry.

    Directories that are not shards pass through; shards are grouped by their
    run (the config without ``run.shard``), and each group must be complete
    (:func:`merged_results`' checks).  Each entry is ``(paths, results)``:
    the directories it was read from (several for joined shards), in the
    order of the first.
    """
    loaded = [(Path(p), load_results(p)) for p in paths]
    groups: dict[str, list[int]] = {}
    for i, (_, res) in enumerate(loaded):
        run = res.config.get("run")
        if isinstance(run, dict) and run.get("shard"):  # only shards need their config read
            config = Config.from_dict(res.config)
            key = json.dumps(config.replace(shard="").to_dict(), sort_keys=True)
            groups.setdefault(key, []).append(i)
    first_of = {idx[0]: idx for idx in groups.values()}
    grouped = {i for idx in groups.values() for i in idx}
    out: list[tuple[list[Path], Results]] = []
    for i, (path, res) in enumerate(loaded):
        if i in first_of:
            dirs = [loaded[j][0] for j in first_of[i]]
            out.append((dirs, merged_results(dirs)))
        elif i not in grouped:
            out.append(([path], res))
    return out


def by_schedule(res: Results) -> list[tuple[str, Results]]:
    """A run's members grouped by ELR schedule (``--elr-schedules``), in grid order.

    One ``(schedule, results)`` per schedule, each with only its members'
    per-member arrays (shared arrays kept, the logged filter steps left out);
    a run without schedules is one ``("", res)``.
    """
    m = res.metrics
    if "elr_schedule" not in m or len(set(m["elr_schedule"].tolist())) < 2:
        return [("", res)]
    names = m["elr_schedule"]
    out = []
    for name in dict.fromkeys(names.tolist()):
        pick = names == name
        metrics = {
            k: v if k in SHARED else v[pick] for k, v in m.items() if not k.startswith(LOGGED)
        }
        summary = dict(res.summary)
        if len(summary.get("members", [])) == len(names):
            summary["members"] = [r for r, p in zip(summary["members"], pick, strict=True) if p]
        out.append((name, Results(config=res.config, metrics=metrics, summary=summary)))
    return out


__all__ = ["SHARED", "by_schedule", "load_runs", "merge_loaded", "merged_results", "shards_of"]
