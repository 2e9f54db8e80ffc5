"""Linear connectivity: loss and accuracy along ``(1 - a) * theta_A + a * theta_B``.

Endpoints are checkpointed grid members, named ``DIR[:EPOCH][@ELR]``: the
results directory of a sweep or fine-tune (or the comma-separated shard
directories of one sharded sweep, joined in memory:
:class:`~three_regimes_jax.storage.sources.Source`), the checkpoint epoch
(default: the latest) and optionally the members' ELR (default: all members).
Pairs:

- ``A`` and ``B`` the same selection (one run, one epoch): ``neighbors`` pairs
  members with adjacent ELRs (same seed), ``all`` every two members (Fig. 19 left);
- otherwise, with as many members on both sides, member ``i`` of ``A`` with
  member ``i`` of ``B`` (e.g. checkpoints ``DIR:E`` and ``DIR:E+D`` of one
  trajectory, Fig. 22); else each member of the larger side with the member of
  the same seed on the other side, which must have one member per seed (a
  pre-trained solution and its fine-tunes, Fig. 19 right).

Every point is evaluated by the trainer's compiled evaluation, vmapped over
points and pairs: train loss/accuracy with train-mode BN (batch statistics, as
the paper measures train loss) and test loss/accuracy with eval-mode BN, whose
running statistics are interpolated too, or re-estimated at every point by a
pass over the training data with ``recompute_bn=True``.  Parameters and
running statistics are interpolated; the frozen last layer must be the same at
both ends (members of the same seed).

The barrier of a pair is ``max_a [loss(a) - ((1 - a) loss(0) + a loss(1))]``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.engine.grid import GridState, member, stack
from three_regimes_jax.engine.loop import DeviceData
from three_regimes_jax.engine.trainer import GridTrainer
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.sources import Source
from three_regimes_jax.studies.run import load_data, make_trainer, state_template

PAIRINGS = ("neighbors", "all")
_SPEC = re.compile(r"^(?P<dir>.+?)(?::(?P<epoch>\d+))?(?:@(?P<elr>[^@:]+))?$")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Selected members of one checkpoint.

    Attributes:
      directory: results directory.
      epoch: checkpoint epoch.
      state: the selected members as a grid.
      elr, seed, source_elr: per selected member.
      config: the run's sweep config dict (for fine-tunes: the source's).
    """

    directory: str
    epoch: int
    state: GridState
    elr: list[float]
    seed: list[int]
    source_elr: list[float]
    config: dict[str, Any]


def parse_endpoint(spec: str) -> tuple[str, int | None, float | None]:
    """Parses ``DIR[:EPOCH][@ELR]`` into ``(dir, epoch or None, elr or None)``."""
    m = _SPEC.match(spec)
    if not m or not m.group("dir"):
        raise UserError(f"bad endpoint {spec!r}; write DIR, DIR:EPOCH, DIR@ELR or DIR:EPOCH@ELR")
    elr = None
    if m.group("elr") is not None:
        try:
            elr = float(m.group("elr"))
        except ValueError:
            raise UserError(f"bad ELR in endpoint {spec!r}; e.g. runs/x:10@1e-3") from None
    epoch = int(m.group("epoch")) if m.group("epoch") is not None else None
    return m.group("dir"), epoch, elr


def load_endpoint(spec: str) -> Endpoint:
    """Loads the members named by ``DIR[:EPOCH][@ELR]`` from their checkpoint."""
    directory, epoch, elr = parse_endpoint(spec)
    src = Source(directory, flag="endpoint")
    if epoch is None:
        epoch = src.latest()
        if epoch is None:
            raise UserError(f"no checkpoints in {directory}; run it with --checkpoint-* flags")
    meta = src.meta(epoch)
    wds = sorted({float(w) for w in meta.get("weight_decay", [])})
    if len(wds) > 1:
        raise UserError(
            f"{directory} sweeps several weight decays ({', '.join(f'{w:g}' for w in wds)}); "
            "interpolate selects members by LR: use a run with one weight decay"
        )
    elrs = [float(e) for e in meta["elr"]]
    picks = list(range(len(elrs)))
    if elr is not None:
        picks = [i for i, e in enumerate(elrs) if math.isclose(e, elr, rel_tol=1e-6)]
        if not picks:
            have = ", ".join(f"{e:g}" for e in dict.fromkeys(elrs))
            raise UserError(f"no member with ELR {elr:g} in {directory}:{epoch}; it has: {have}")
    state, _ = src.load(epoch, state_template)
    source_elr = [float(e) for e in meta.get("source_elr", elrs)]
    return Endpoint(
        directory=str(directory),
        epoch=epoch,
        state=stack([member(state, i) for i in picks]),
        elr=[elrs[i] for i in picks],
        seed=[int(meta["seed"][i]) for i in picks],
        source_elr=[source_elr[i] for i in picks],
        config=meta["config"],
    )


def pair_indices(a: Endpoint, b: Endpoint, pairs: str) -> list[tuple[int, int]]:
    """Which member of ``a`` meets which member of ``b`` (module docstring)."""
    if pairs not in PAIRINGS:
        raise UserError(f"--pairs must be one of {', '.join(PAIRINGS)}, got {pairs!r}")
    same = (a.directory, a.epoch, a.elr) == (b.directory, b.epoch, b.elr)
    if same:
        by_seed: dict[int, list[int]] = {}
        for i in sorted(range(len(a.elr)), key=lambda i: a.elr[i]):
            by_seed.setdefault(a.seed[i], []).append(i)
        out = []
        for idx in by_seed.values():
            if pairs == "neighbors":
                out += list(itertools.pairwise(idx))
            else:
                out += list(itertools.combinations(idx, 2))
        if not out:
            raise UserError("one member only: give two runs, epochs or ELRs to interpolate")
        return out
    if len(a.elr) == len(b.elr):
        return [(i, i) for i in range(len(a.elr))]
    a_by_seed = {s: i for i, s in enumerate(a.seed)}
    b_by_seed = {s: j for j, s in enumerate(b.seed)}
    if len(a_by_seed) == len(a.seed) and set(b.seed) <= set(a_by_seed):
        return [(a_by_seed[s], j) for j, s in enumerate(b.seed)]
    if len(b_by_seed) == len(b.seed) and set(a.seed) <= set(b_by_seed):
        return [(i, b_by_seed[s]) for i, s in enumerate(a.seed)]
    raise UserError(
        f"cannot pair {len(a.elr)} members of --a with {len(b.elr)} of --b; "
        "select members with @ELR"
    )


def interpolated_grid(a: GridState, b: GridState, alphas: np.ndarray) -> GridState:
    """Grid of ``len(a) * len(alphas)`` members on the segments ``a[i] -> b[i]``.

    ``a`` and ``b`` are grids of equal size (pair ``i`` = member ``i`` of each);
    member ``i * P + k`` is at ``alphas[k]``.  Parameters and BN statistics are
    interpolated; everything else comes from ``a``.
    """
    al = jnp.asarray(alphas, jnp.float32)

    def mix(xa, xb):
        xa, xb = xa[:, None], xb[:, None]
        w = al.reshape((1, -1) + (1,) * (xa.ndim - 2))
        out = (1 - w) * xa + w * xb
        return out.reshape((-1, *out.shape[2:]))

    def repeat(x):
        return jnp.repeat(x, len(alphas), axis=0)

    return GridState(
        params=jax.tree.map(mix, a.params, b.params),
        batch_stats=jax.tree.map(mix, a.batch_stats, b.batch_stats),
        frozen=jax.tree.map(repeat, a.frozen),
        opt_state=jax.tree.map(repeat, a.opt_state),
        step=repeat(a.step),
        data_key=repeat(a.data_key),
    )


def barrier(loss: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """``max_a [loss(a) - ((1 - a) loss(0) + a loss(1))]`` per row of ``loss`` [pairs, P]."""
    loss = np.asarray(loss, np.float64)
    al = np.asarray(alphas, np.float64)
    chord = (1 - al) * loss[:, :1] + al * loss[:, -1:]
    return np.max(loss - chord, axis=1)


def linear_path(
    trainer: GridTrainer,
    a: GridState,
    b: GridState,
    alphas: np.ndarray,
    data: DeviceData,
    *,
    recompute_bn: bool = False,
    chunk: int = 64,
) -> dict[str, np.ndarray]:
    """Metrics along the segments between members ``a[i]`` and ``b[i]``.

    Args:
      trainer: the compiled trainer of the endpoints' model.
      a: grid of the first endpoints.
      b: grid of the second endpoints, the same size as ``a`` (pair i = a[i], b[i]).
      alphas: ``[P]`` interpolation weights (0: ``a``, 1: ``b``).
      data: device arrays.
      recompute_bn: re-estimate the BN running statistics at every point from
        the training data before the test metrics.
      chunk: at most this many points per compiled call (bounds memory).

    Returns:
      ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` of shape
      ``[pairs, P]``.

    Raises:
      UserError: the endpoints of a pair have different frozen layers.
    """
    for fa, fb in zip(jax.tree.leaves(a.frozen), jax.tree.leaves(b.frozen), strict=True):
        if not np.array_equal(np.asarray(fa), np.asarray(fb)):
            raise UserError(
                "the endpoints have different frozen last layers (runs with --per-seed-head "
                "and different seeds); interpolate members of the same seed"
            )
    grid = interpolated_grid(a, b, alphas)
    total = grid.size
    size = min(chunk, total)
    parts = []
    for start in range(0, total, size):
        idx = np.minimum(np.arange(start, start + size), total - 1)  # pad the last chunk
        part = jax.tree.map(lambda x, idx=idx: x[idx], grid)
        if recompute_bn:
            part = trainer.recompute_batch_stats(part, data.x_train)
        ev = trainer.evaluate(part, data.x_train, data.y_train, data.x_test, data.y_test)
        parts.append({k: np.asarray(v)[: total - start] for k, v in ev.items()})
    keys = ("train_loss", "train_acc", "test_loss", "test_acc")
    return {k: np.concatenate([p[k] for p in parts]).reshape(a.size, len(alphas)) for k in keys}


def run_interpolate(
    a_spec: str,
    b_spec: str,
    out: str,
    *,
    pairs: str = "neighbors",
    points: int = 21,
    recompute_bn: bool = False,
    overwrite: bool = False,
) -> dict[str, np.ndarray]:
    """The ``three-regimes interpolate`` command: endpoints -> ``FILE.npz``.

    ``out`` is checked before any work: a ``.npz`` path whose directory can be
    written (it is created if missing); an existing file there is replaced
    only with ``overwrite``, and only if it is itself an interpolate file.

    The file holds ``alpha`` [P]; ``train_loss``, ``train_acc``, ``test_loss``,
    ``test_acc`` [pairs, P]; ``barrier`` and ``test_barrier`` [pairs]; and per
    pair ``a_elr``, ``b_elr``, ``a_source_elr``, ``b_source_elr``, ``a_seed``,
    ``b_seed``, ``a_epoch``, ``b_epoch``; ``a_dir``, ``b_dir``.

    Raises:
      UserError: bad specs, mismatched models, too few points, unusable ``out``.
    """
    from three_regimes_jax.storage.checkpoint import config_difference
    from three_regimes_jax.storage.outdir import check_out_file
    from three_regimes_jax.storage.results import write_npz

    if isinstance(points, bool) or not isinstance(points, int) or not 2 <= points <= 10_000:
        raise UserError(f"--points must be an integer in [2, 10000], got {points}")
    check_out_file(out, ".npz", overwrite=overwrite, ours=_is_interpolate_file)
    a, b = load_endpoint(a_spec), load_endpoint(b_spec)
    diff = config_difference(a.config, b.config)
    if diff:
        raise UserError(f"--a and --b are different models: {diff}")
    idx = pair_indices(a, b, pairs)
    config = Config.from_dict(a.config)
    ds = load_data(config)
    trainer = make_trainer(config, ds.num_classes, ds.image_shape)
    ia, ib = [i for i, _ in idx], [j for _, j in idx]
    alphas = np.linspace(0.0, 1.0, points)
    res = linear_path(
        trainer,
        stack([member(a.state, i) for i in ia]),
        stack([member(b.state, j) for j in ib]),
        alphas,
        DeviceData.from_dataset(ds),
        recompute_bn=recompute_bn,
    )
    arrays = {
        "alpha": alphas,
        **res,
        "barrier": barrier(res["train_loss"], alphas),
        "test_barrier": barrier(res["test_loss"], alphas),
        "a_elr": np.asarray([a.elr[i] for i in ia]),
        "b_elr": np.asarray([b.elr[j] for j in ib]),
        "a_source_elr": np.asarray([a.source_elr[i] for i in ia]),
        "b_source_elr": np.asarray([b.source_elr[j] for j in ib]),
        "a_seed": np.asarray([a.seed[i] for i in ia]),
        "b_seed": np.asarray([b.seed[j] for j in ib]),
        "a_epoch": np.full(len(idx), a.epoch),
        "b_epoch": np.full(len(idx), b.epoch),
        "a_dir": np.asarray(a.directory),
        "b_dir": np.asarray(b.directory),
        "recompute_bn": np.asarray(recompute_bn),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_npz(out, arrays)
    return arrays


def _is_interpolate_file(path: Path) -> bool:
    """Whether ``path`` is a ``.npz`` written by :func:`run_interpolate`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {"alpha", "barrier", "a_dir", "b_dir"} <= set(z.files)
    except Exception:  # noqa: BLE001 - unreadable: not ours
        return False
