"""Joining the shards of a grid (``sweep --shard K/N``) into the unsharded run's results.

A grid is embarrassingly parallel: ``three-regimes sweep ... --shard K/N`` trains
the contiguous block of members ``K*G//N .. (K+1)*G//N - 1`` (grid order) into its
own results directory, on any machine or scheduler.  :func:`merge_shards` checks
that the N directories belong together (one config but for ``run.shard``; each
shard once; complete, verified results) and writes one directory with:

- ``config.json``: the config with ``run.shard`` cleared, i.e. the unsharded run's;
- ``metrics.npz``: per-member arrays concatenated in shard order, shared arrays
  (epochs, group names, ...) checked equal and kept once, so with the ``map``
  strategy it is bit-for-bit the unsharded run's (``tests/test_shards.py``);
- ``summary.json``: the members in grid order; ``wall_time_s`` is the shards' sum
  and ``shards`` lists each shard's directory, wall time and memory plan;
- ``checkpoints/<epoch>`` for every epoch all shards checkpointed: the shards'
  states concatenated along the grid axis, so fine-tuning and interpolation read a
  merged run as any other.  The resume history (``history.npz``) is not merged: a
  merged run is finished.

:func:`merged_results` does the same in memory (no checkpoints), for commands that
take a list of shard directories directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import GridCheckpointer, complete_epochs, load_checkpoint
from three_regimes_jax.storage.checkpoint_read import read_meta
from three_regimes_jax.storage.outdir import claim
from three_regimes_jax.storage.results import Results, config_diff, load_results, write_results

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


def _shards(
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
    return _merge(_shards(dirs))


def _merge(shards: list[tuple[tuple[int, int], Config, Results, str]]) -> Results:
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


def _merge_checkpoints(dirs: list[Path], out: Path, config: dict[str, Any]) -> list[int]:
    """Concatenated shard states for every epoch all shards hold; returns those epochs."""
    from three_regimes_jax.studies.run import state_template

    epochs = sorted(set.intersection(*(set(complete_epochs(d)) for d in dirs)))
    if not epochs:
        return []
    metas = [read_meta(d, epochs[0]) for d in dirs]
    ckpt = GridCheckpointer(
        out,
        config=config,
        num_classes=metas[0]["num_classes"],
        input_shape=metas[0]["input_shape"],
        seeds=[s for m in metas for s in m["seed"]],
    )
    with ckpt:
        for epoch in epochs:
            states, extra = [], {}
            for d in dirs:
                meta = read_meta(d, epoch)
                state, _ = load_checkpoint(d, epoch, template=state_template(meta))
                states.append(jax.device_get(state))
                extra = {k: v for k, v in meta.items() if k not in _META_OWN}
            merged = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *states)
            ckpt.save(epoch, merged, extra, overwrite=True)
    return epochs


# Meta keys the checkpointer writes itself (the rest is the run's extra meta).
_META_OWN = {
    "format_version",
    "config",
    "epoch",
    "members",
    "elr",
    "seed",
    "step",
    "num_classes",
    "input_shape",
    "lr",
    "weight_decay",
}


def merge_shards(
    dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False
) -> Results:
    """Writes the unsharded run's results directory ``out`` from its N shard directories.

    Args:
      dirs: the shards' results directories, in any order.
      out: the merged results directory (refused if it holds another run,
        unless ``overwrite``).
      overwrite: allow ``out`` to hold another run.

    Returns:
      The merged :class:`~three_regimes_jax.storage.results.Results`.

    Raises:
      UserError: the directories are not the N shards of one run (another
        config, a shard missing or given twice, unreadable or damaged results).
    """
    shards = _shards(dirs)
    res = _merge(shards)
    reads = [d for *_, d in shards]
    with claim(
        out,
        command="merge",
        config=res.config,
        overwrite=overwrite,
        reads=reads,
        differ=config_diff,
    ):
        epochs = _merge_checkpoints([Path(d) for d in reads], Path(out), res.config)
        if epochs:
            res.summary["checkpoint_epochs"] = epochs
        write_results(out, res.config, res.metrics, res.summary)
    return res


__all__ = ["merge_shards", "merged_results"]
