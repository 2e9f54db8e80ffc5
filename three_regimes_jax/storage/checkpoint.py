"""Checkpoints of whole grids: a thin wrapper around Orbax.

A results directory ``DIR`` keeps its checkpoints in ``DIR/checkpoints/<E>/``,
one Orbax step directory per saved epoch ``E`` (``E`` = number of epochs
trained; ``0`` is the initial state).  Each holds two items:

- ``state``: the grid's state, a pytree whose every leaf has the leading grid
  axis G (in practice a ``GridState``: params, batch_stats, frozen, opt_state,
  step, data_key), saved with ``StandardSave`` and restored into the structure
  and dtypes of a caller-given template.
- ``meta``: JSON with the keys of :data:`META_KEYS`: ``format_version``,
  ``config`` (the run's config dict), ``epoch``, ``members`` (G), ``elr`` [G]
  (each member's ELR as stored in the state), ``seed`` [G], ``step`` [G]
  (optimizer steps taken), ``num_classes`` and ``input_shape`` (so the caller
  can rebuild the model from the checkpoint alone), plus any extra keys the
  caller gives.

This module knows nothing about models or training: rebuilding a template
from the meta is the studies layer's job.

Saving is synchronous (no background thread; a save is complete on return)
and atomic: Orbax writes ``<E>.orbax-checkpoint-tmp-<time>`` and renames it,
so an interrupted save leaves only a temporary directory, which
:func:`available_epochs` never lists (and the next save removes).

Errors are :class:`~three_regimes_jax.errors.UserError` (one line, how to fix)
and loading writes nothing.  Orbax's own log lines are silenced while it runs
(:mod:`~three_regimes_jax.storage.orbax_errors`).  Which epochs to save:
:mod:`~three_regimes_jax.storage.schedule`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.orbax_errors import (
    drop_closed_loop_errors,
    orbax_failure,
    quiet_orbax,
    unreadable,
)
from three_regimes_jax.storage.schedule import nonneg_int
from three_regimes_jax.storage.trees import config_difference, leaves, path_str, tree_difference

CHECKPOINTS = "checkpoints"
META_FORMAT_VERSION = 1
META_KEYS = (
    "format_version",
    "config",
    "epoch",
    "members",
    "elr",
    "seed",
    "step",
    "num_classes",
    "input_shape",
)
# ModelConfig fields that fix a model's parameter shapes, per model; other
# models compare all of _GENERIC_FIELDS.  The model's name, the dataset (input
# shape, classes) and train_last_layer are always compared.
# Files every saved step must have (relative to the step directory).
_REQUIRED_FILES = ("meta/metadata", "state/_METADATA")


def _ocp():
    """Imports Orbax lazily (it adds ~0.25 s to the CLI's start-up)."""
    import orbax.checkpoint as ocp

    return ocp


# --------------------------------------------------------------------------- listing


def checkpoint_dir(directory: str | Path) -> Path:
    """The checkpoints directory of ``directory``.

    Args:
      directory: a results directory (holding ``checkpoints/``) or a
        checkpoints directory itself.

    Returns:
      ``directory/checkpoints`` if it exists, else ``directory`` (absolute:
      Orbax refuses relative paths).
    """
    directory = Path(directory).absolute()
    sub = directory / CHECKPOINTS
    return sub if sub.is_dir() else directory


def _epochs_in(ckdir: Path) -> list[int]:
    if not ckdir.is_dir():
        return []
    # Orbax's temporary directories ("7.orbax-checkpoint-tmp-<time>") are not
    # all digits and so never listed.
    names = (p.name for p in ckdir.iterdir() if p.is_dir())
    return sorted(int(n) for n in names if n.isascii() and n.isdigit())


def available_epochs(directory: str | Path) -> list[int]:
    """Saved epochs in ``directory`` (results or checkpoints dir), sorted; [] if none."""
    return _epochs_in(checkpoint_dir(directory))


def latest_epoch(directory: str | Path) -> int | None:
    """The last saved epoch in ``directory``, or None if there is none."""
    epochs = available_epochs(directory)
    return epochs[-1] if epochs else None


# --------------------------------------------------------------------------- saving


def _jsonable(x: Any) -> Any:
    """Converts numpy/JAX scalars and arrays, tuples and paths to JSON types."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic | np.ndarray | jax.Array):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, Path):
        return str(x)
    return x


def _f32_list(a: Any) -> list[float]:
    """float32 values as the shortest decimals that round-trip (1e-3, not 0.0010000000475)."""
    return [float(str(v)) for v in np.asarray(jax.device_get(a), np.float32).ravel()]


class GridCheckpointer:
    """Saves a grid run's checkpoints to ``directory/checkpoints/<epoch>``.

    Nothing is written until the first :meth:`save`.  Use as a context
    manager, or call :meth:`close` at the end.

    Args:
      directory: the run's results directory.
      config: the run's config as a JSON dict (``Config.to_dict()``), stored
        in every checkpoint's meta.
      num_classes: number of classes of the model's output.
      input_shape: input shape without the batch axis.
      seeds: seed of each member (length G).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        config: Mapping[str, Any],
        num_classes: int,
        input_shape: Sequence[int],
        seeds: Sequence[int],
    ):
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a JSON dict, got {type(config).__name__}")
        self.directory = Path(directory).absolute() / CHECKPOINTS  # Orbax needs absolute
        self.config = _jsonable(config)
        self.seeds = [int(s) for s in seeds]
        self.num_classes = int(num_classes)
        self.input_shape = [int(d) for d in input_shape]
        self._manager = None

    def _get_manager(self):
        if self._manager is None:
            ocp = _ocp()
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None,
                create=True,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # leftovers of interrupted saves
            )
            handlers = {
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            }
            with quiet_orbax():
                self._manager = ocp.CheckpointManager(
                    self.directory, options=options, item_handlers=handlers
                )
        return self._manager

    def meta(self, epoch: int, state: Any, extra: Mapping[str, Any] | None = None) -> dict:
        """The JSON meta saved with ``state`` at ``epoch`` (see module docstring).

        ``state`` needs ``step`` [G] and ``opt_state.elr`` [G] (a ``GridState``).
        """
        g = int(np.shape(state.step)[0])
        if len(self.seeds) != g:
            raise ValueError(f"the checkpointer has {len(self.seeds)} seeds, the grid {g} members")
        meta = {
            "format_version": META_FORMAT_VERSION,
            "config": self.config,
            "epoch": int(epoch),
            "members": g,
            "elr": _f32_list(state.opt_state.elr),
            "seed": list(self.seeds),
            "step": [int(s) for s in np.asarray(jax.device_get(state.step))],
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }
        extra = _jsonable(dict(extra or {}))
        clash = sorted(set(extra) & set(meta))
        if clash:
            raise ValueError(f"extra meta keys {clash} are reserved; use other names")
        return {**meta, **extra}

    def save(
        self,
        epoch: int,
        state: Any,
        extra: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Saves the whole grid ``state`` after ``epoch`` epochs, synchronously.

        Args:
          epoch: number of epochs trained (0: the initial state).
          state: the grid state (any sharding; every leaf has the grid axis).
          extra: extra JSON-able meta keys (not one of :data:`META_KEYS`).
          overwrite: replace an existing checkpoint of this epoch.

        Returns:
          The checkpoint's directory ``directory/checkpoints/<epoch>``.

        Raises:
          UserError: a checkpoint of ``epoch`` exists and ``overwrite`` is False.
        """
        epoch = nonneg_int(epoch, "the checkpoint epoch")
        full_meta = self.meta(epoch, state, extra)
        json.dumps(full_meta, allow_nan=True)  # fail before writing anything
        path = self.directory / str(epoch)
        if path.exists():
            if not overwrite:
                raise UserError(
                    f"a checkpoint for epoch {epoch} already exists in {self.directory}; "
                    "pass --overwrite or pick another --out"
                )
            shutil.rmtree(path)
        ocp = _ocp()
        manager = self._get_manager()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(full_meta)
        )
        with quiet_orbax():
            manager.reload()  # the step list may have changed (overwrite, other tools)
            manager.save(epoch, args=args, force=True)
            manager.wait_until_finished()
        return path

    def close(self) -> None:
        """Waits for and releases Orbax's resources."""
        if self._manager is not None:
            with quiet_orbax():
                self._manager.close()
            self._manager = None

    def __enter__(self) -> GridCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- loading


def _reader():
    """An Orbax Checkpointer reading one step's ``state`` and ``meta`` (writes nothing)."""
    drop_closed_loop_errors()
    ocp = _ocp()
    handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    return ocp.Checkpointer(handler)


def _find_epoch(directory: str | Path, epoch: int | None) -> tuple[Path, int]:
    ckdir = checkpoint_dir(directory)
    epochs = _epochs_in(ckdir)
    if not epochs:
        raise UserError(
            f"no checkpoints in {directory}; pass the results directory of a run "
            "saved with checkpoints"
        )
    if epoch is None:
        return ckdir, epochs[-1]
    epoch = nonneg_int(epoch, "the checkpoint epoch")
    if epoch not in epochs:
        listed = ", ".join(map(str, epochs))
        raise UserError(f"no checkpoint for epoch {epoch} in {ckdir}; available: {listed}")
    return ckdir, epoch


def read_meta(directory: str | Path, epoch: int | None = None) -> dict[str, Any]:
    """The JSON meta of a checkpoint (``epoch`` None: the latest), without its arrays.

    Raises:
      UserError: no such checkpoint, or it is unreadable.
    """
    ckdir, epoch = _find_epoch(directory, epoch)
    return _read_meta(ckdir, epoch)


def _read_meta(ckdir: Path, epoch: int) -> dict[str, Any]:
    path = ckdir / str(epoch)
    for f in _REQUIRED_FILES:
        if not (path / f).is_file():
            raise unreadable(epoch, ckdir, f"missing {f}")
    ocp = _ocp()
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    try:
        with quiet_orbax():
            meta = _reader().restore(path, args=args)["meta"]
    except Exception as e:  # noqa: BLE001 - any Orbax/JSON failure means unreadable
        raise orbax_failure(epoch, ckdir, e) from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise unreadable(epoch, ckdir, f"meta lacks {', '.join(missing)}")
    return meta


def _saved_leaves(ckdir: Path, epoch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Leaf path -> (shape, dtype) of the saved state, from Orbax's metadata."""
    try:
        with quiet_orbax():
            md = _reader().metadata(ckdir / str(epoch))
        tree = md.item_metadata["state"]
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise ValueError("no state metadata")
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {path_str(p): (tuple(m.shape), str(np.dtype(m.dtype))) for p, m in flat}
    except Exception as e:  # noqa: BLE001 - any Orbax failure means unreadable
        raise orbax_failure(epoch, ckdir, e) from None


def _restore_target(template: Any) -> Any:
    """``ShapeDtypeStruct``s with the template's sharding (default device if it has none)."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x):
        sharding = getattr(x, "sharding", None)
        if not isinstance(sharding, jax.sharding.Sharding):
            sharding = default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(one, template)


def load_checkpoint(
    directory: str | Path,
    epoch: int | None = None,
    *,
    template: Any,
    config: Mapping[str, Any] | Config | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Restores a saved grid and its meta.

    Args:
      directory: a results directory (holding ``checkpoints/``) or the
        checkpoints directory itself.
      epoch: the epoch to load; None: the latest.
      template: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. a
        ``GridState``) fixing the structure, dtypes and sharding to restore
        into (the default device for leaves without a sharding).
      config: the config (dict or :class:`Config`) the caller expects the
        checkpoint to match in model and dataset.

    Returns:
      ``(state, meta)``: the state in the template's structure, bit-for-bit as
      saved, and the JSON meta (see module docstring).

    Raises:
      UserError: no checkpoints or no such epoch (lists the available ones);
        the checkpoint is of another model or grid than ``template``/``config``
        (names the first differing field or leaf); it is unreadable.
    """
    ckdir, epoch = _find_epoch(directory, epoch)
    meta = _read_meta(ckdir, epoch)
    if config is not None:
        diff = config_difference(meta["config"], config)
        if diff:
            raise UserError(
                f"checkpoint at epoch {epoch} in {ckdir} is of a different model: {diff}; "
                "use a matching config or another checkpoint"
            )
    diff = tree_difference(_saved_leaves(ckdir, epoch), leaves(template))
    if diff:
        raise UserError(
            f"checkpoint at epoch {epoch} in {ckdir} does not match the template: {diff}; "
            "load it with a matching model and grid"
        )
    ocp = _ocp()
    target = _restore_target(template)
    try:
        with quiet_orbax():
            restored = _reader().restore(
                ckdir / str(epoch),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
            )
    except Exception as e:  # noqa: BLE001
        raise orbax_failure(epoch, ckdir, e) from None
    return restored["state"], meta


__all__ = [
    "CHECKPOINTS",
    "META_KEYS",
    "GridCheckpointer",
    "available_epochs",
    "checkpoint_dir",
    "config_difference",
    "latest_epoch",
    "load_checkpoint",
    "read_meta",
]
