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
:func:`available_epochs` never lists (and the next save removes).  After
Orbax's rename, ``<E>/MANIFEST.sha256`` lists the SHA-256 of every file of the
step (:mod:`~three_regimes_jax.storage.integrity`); every read verifies it
first, so a changed, truncated or missing file is one clear error, never a
restored NaN.  A step of meta format 2 without its manifest was interrupted
between the two writes: :func:`complete_epochs` leaves it out and reading it
is an error.  Steps of format 1 (written before manifests) are read unverified.

Errors are :class:`~three_regimes_jax.errors.UserError` (one line, how to fix)
and loading writes nothing.  Orbax's own log lines are silenced while it runs
(:mod:`~three_regimes_jax.storage.orbax_errors`).  Which epochs to save:
:mod:`~three_regimes_jax.storage.schedule`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint_read import (
    CHECKPOINTS,
    META_FORMAT_VERSION,
    META_KEYS,
    _ocp,
    available_epochs,
    checkpoint_dir,
    complete_epochs,
    latest_epoch,
    load_checkpoint,
    read_meta,
)
from three_regimes_jax.storage.integrity import write_manifest
from three_regimes_jax.storage.orbax_errors import quiet_orbax
from three_regimes_jax.storage.schedule import nonneg_int
from three_regimes_jax.storage.trees import config_difference

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
            many = jax.process_count() > 1
            if many:  # Orbax creates no directory for a subset of the processes
                self.directory.mkdir(parents=True, exist_ok=True)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None,
                create=not many,
                enable_async_checkpointing=False,
                cleanup_tmp_directories=True,  # leftovers of interrupted saves
                # Several processes (``sweep --distributed``): process 0 alone writes the
                # whole grid, which every process holds (see :meth:`save`).
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=0, active_processes={0} if many else None
                ),
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

        ``state`` needs ``step`` [G] and ``opt_state.elr`` [G] (a ``GridState``)
        or, in the whole space, ``opt_state.lr`` and ``opt_state.weight_decay``:
        ``elr`` then holds the initial LRs, as ``metrics.npz`` does.
        """
        g = int(np.shape(state.step)[0])
        if len(self.seeds) != g:
            raise ValueError(f"the checkpointer has {len(self.seeds)} seeds, the grid {g} members")
        meta = {
            "format_version": META_FORMAT_VERSION,
            "config": self.config,
            "epoch": int(epoch),
            "members": g,
            "elr": _f32_list(_swept_step(state.opt_state)),
            "seed": list(self.seeds),
            "step": [int(s) for s in np.asarray(jax.device_get(state.step))],
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
        }
        if hasattr(state.opt_state, "weight_decay"):
            meta["lr"] = meta["elr"]
            meta["weight_decay"] = _f32_list(state.opt_state.weight_decay)
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
        state = local_copy(state)
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
        try:
            with quiet_orbax():
                manager.reload()  # the step list may have changed (overwrite, other tools)
                manager.save(epoch, args=args, force=True)
                manager.wait_until_finished()
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - Orbax wraps OS errors of its writers
            raise _as_os_error(e, path) from None
        write_manifest(path)
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


def local_copy(tree: Any) -> Any:
    """``tree`` as this process's numpy copy when several processes run (else as is).

    Under ``sweep --distributed`` every compiled grid function hands each process
    the whole grid, replicated over all processes' devices; Orbax would save such
    arrays collectively (and refuses one process's local arrays).  Process 0
    saves its own replica instead, as numpy, as one process's checkpoint, so a
    resume reads it with any number of processes.
    """
    if jax.process_count() == 1:
        return tree

    def one(x):
        if not isinstance(x, jax.Array):
            return x
        if not x.is_fully_addressable and not x.is_fully_replicated:
            raise ValueError("a grid array split over processes cannot be saved by one")
        return np.asarray(x.addressable_data(0) if not x.is_fully_addressable else x)

    return jax.tree.map(one, tree)


def _as_os_error(e: Exception, path: Path) -> Exception:
    """An OSError for an Orbax/TensorStore write failure caused by the OS, else ``e``."""
    text = str(e)
    for code, words in ((errno.ENOSPC, "No space left"), (errno.EDQUOT, "quota exceeded")):
        if words in text:
            return OSError(code, os.strerror(code), str(path))
    return e


def _swept_step(opt_state: Any) -> Any:
    """``[G]``: the ELRs of a sphere state, the initial LRs of a whole-space one."""
    elr = getattr(opt_state, "elr", None)
    return opt_state.lr if elr is None else elr


__all__ = [
    "CHECKPOINTS",
    "META_FORMAT_VERSION",
    "META_KEYS",
    "GridCheckpointer",
    "available_epochs",
    "checkpoint_dir",
    "complete_epochs",
    "config_difference",
    "latest_epoch",
    "load_checkpoint",
    "local_copy",
    "read_meta",
]
