"""Reading checkpoints: listing, verifying and restoring saved grid steps.

The format is described in :mod:`~three_regimes_jax.storage.checkpoint`
(which also re-exports everything here).  Every read first verifies the
step's ``MANIFEST.sha256`` (:mod:`~three_regimes_jax.storage.integrity`), so
damaged files are one :class:`~three_regimes_jax.errors.UserError`, never
restored data; reading writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.integrity import MANIFEST, has_manifest, manifest_problem
from three_regimes_jax.storage.orbax_errors import (
    drop_closed_loop_errors,
    orbax_failure,
    quiet_orbax,
    unreadable,
)
from three_regimes_jax.storage.schedule import nonneg_int
from three_regimes_jax.storage.trees import config_difference, leaves, path_str, tree_difference

CHECKPOINTS = "checkpoints"
META_FORMAT_VERSION = 2  # 2: every step has a MANIFEST.sha256
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


def complete_epochs(directory: str | Path) -> list[int]:
    """Saved epochs whose checkpoint is complete (has its manifest, or predates them)."""
    ckdir = checkpoint_dir(directory)
    out = []
    for e in _epochs_in(ckdir):
        try:
            _verify(ckdir, e, hash_files=False)
        except UserError:
            continue
        out.append(e)
    return out


def latest_epoch(directory: str | Path) -> int | None:
    """The last saved epoch in ``directory``, or None if there is none."""
    epochs = available_epochs(directory)
    return epochs[-1] if epochs else None


# --------------------------------------------------------------------------- loading


def _verify(ckdir: Path, epoch: int, *, hash_files: bool = True) -> None:
    """Checks a step's manifest (its file hashes when ``hash_files``).

    Raises:
      UserError: a file changed or is missing; a format-2 step lacks its
        manifest (the save was interrupted).
    """
    path = ckdir / str(epoch)
    if has_manifest(path):
        if not hash_files:
            return
        try:
            problem = manifest_problem(path)
        except UserError:
            problem = f"its {MANIFEST} is damaged"
        if problem is not None:
            raise unreadable(epoch, ckdir, problem)
        return
    version = _read_meta_unverified(ckdir, epoch).get("format_version")
    if not isinstance(version, int) or version >= 2:
        raise unreadable(
            epoch, ckdir, f"no {MANIFEST}: its save was interrupted or a file was removed"
        )


# --------------------------------------------------------------------------- reading


def _reader():
    """An Orbax Checkpointer reading one step's ``state`` and ``meta`` (writes nothing).

    It is process-local: under ``sweep --distributed`` each process reads the whole
    checkpoint on its own (process 0 saved it as one process's), with no barrier.
    """
    drop_closed_loop_errors()
    ocp = _ocp()
    handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler()
    )
    me = jax.process_index()
    one = {me} if jax.process_count() > 1 else None
    local = ocp.options.MultiprocessingOptions(primary_host=me, active_processes=one)
    return ocp.Checkpointer(handler, multiprocessing_options=local)


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
    _verify(ckdir, epoch)
    return _read_meta_unverified(ckdir, epoch)


def _read_meta_unverified(ckdir: Path, epoch: int) -> dict[str, Any]:
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
    "META_FORMAT_VERSION",
    "META_KEYS",
    "available_epochs",
    "checkpoint_dir",
    "complete_epochs",
    "latest_epoch",
    "load_checkpoint",
    "read_meta",
]
