"""Checkpoints of whole grids: a thin wrapper around Orbax.

A results directory ``DIR`` keeps its checkpoints in ``DIR/checkpoints/<E>/``,
one Orbax step directory per saved epoch ``E`` (``E`` = number of epochs
trained; ``0`` is the initial state).  Each holds two items:

- ``state``: the whole :class:`~three_regimes_jax.grid.GridState` with its
  leading grid axis G (params, batch_stats, frozen, opt_state, step, data_key),
  saved with ``StandardSave`` and restored to the exact pytree structure and
  dtypes (``GridState`` with ``SphereState`` inside).
- ``meta``: JSON with the keys of :data:`META_KEYS`: ``format_version``,
  ``config`` (the run's config dict), ``epoch``, ``members`` (G), ``elr`` [G]
  (each member's ELR as stored in the state), ``seed`` [G], ``step`` [G]
  (optimizer steps taken), ``num_classes`` and ``input_shape`` (so the model
  can be rebuilt from the checkpoint alone), plus any extra keys the caller
  gives.

Saving is synchronous (no background thread; a save is complete on return)
and atomic: Orbax writes ``<E>.orbax-checkpoint-tmp-<time>`` and renames it,
so an interrupted save leaves only a temporary directory, which
:func:`available_epochs` never lists (and the next save removes).

Which epochs to save: :func:`log_schedule` (the paper's log-spaced schedule)
and :func:`checkpoint_epochs` (explicit epochs, every N, log, combined).

Errors are :class:`~three_regimes_jax.errors.UserError` (one line, how to fix)
and loading writes nothing.  Orbax's own log lines are silenced while it runs.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import re
import shutil
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from three_regimes_jax.errors import UserError
from three_regimes_jax.grid import GridState

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
# Config keys that fix a model's parameter shapes, per model; other models
# compare all of _GENERIC_FIELDS.  "model", "dataset" (input shape, classes)
# and "train_last_layer" are always compared when both configs have them.
_MODEL_FIELDS = {"mlp_si": ("hidden",), "convnet_si": ("width", "depth")}
_GENERIC_FIELDS = ("width", "depth", "hidden")
# Files every saved step must have (relative to the step directory).
_REQUIRED_FILES = ("meta/metadata", "state/_METADATA")


def _ocp():
    """Imports Orbax lazily (it adds ~0.25 s to the CLI's start-up)."""
    import orbax.checkpoint as ocp

    return ocp


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences Orbax's absl log lines (warnings, info) while it runs.

    Orbax logs through absl, i.e. the Python logger ``"absl"``, which prints
    ``WARNING:absl:...`` lines on stderr; CLI users should only see our own
    progress and errors (Orbax failures are raised and turned into one line).
    """
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(old)


# --------------------------------------------------------------------------- schedules


def log_schedule(max_epoch: int) -> list[int]:
    """The paper's log-spaced checkpoint epochs up to ``max_epoch``.

    Every epoch below 20, every 5th below 100, every 10th below 200, every
    50th below 1000, every 100th below 2000, and so on by decades: below
    ``2 * 10**k`` every ``10**(k-1)``-th epoch, below ``10**(k+1)`` every
    ``5 * 10**(k-1)``-th (so every 500th below 10000, every 1000th below
    20000, ...).  Epochs 0 and ``max_epoch`` are always included.

    Args:
      max_epoch: the last epoch of the run (>= 0).

    Returns:
      Sorted epochs, e.g. ``log_schedule(250)`` is ``0..19, 20, 25, ..., 95,
      100, 110, ..., 190, 200, 250``.

    Raises:
      UserError: ``max_epoch`` is negative.
    """
    max_epoch = _nonneg_int(max_epoch, "the number of epochs")
    epochs = {0, max_epoch}
    e, k = 0, 1  # current epoch; decade: [10**k, 10**(k+1)) after the first 20
    while e <= max_epoch:
        epochs.add(e)
        decade = 10**k
        step = decade // 10 if e < 2 * decade else decade // 2
        e += step
        if e >= 10 * decade:
            k += 1
    return sorted(epochs)


def checkpoint_epochs(
    max_epoch: int, epochs: Iterable[int] = (), every: int = 0, log: bool = False
) -> list[int]:
    """The epochs to checkpoint: explicit ones, every N-th, the log schedule, combined.

    Epoch ``E`` means the state after ``E`` epochs of training (0: the initial
    state).  When checkpointing is on (any of ``epochs``, ``every``, ``log``),
    epoch 0 and the final epoch ``max_epoch`` are always included: the init
    and the end state are what fine-tuning and interpolation start from.

    Args:
      max_epoch: the last epoch of the run (>= 0).
      epochs: explicit epochs, each in ``[0, max_epoch]``.
      every: also every ``every``-th epoch (0: off).
      log: also :func:`log_schedule`.

    Returns:
      Sorted distinct epochs; empty when checkpointing is off.

    Raises:
      UserError: an epoch outside ``[0, max_epoch]`` or a negative ``every``.
    """
    max_epoch = _nonneg_int(max_epoch, "the number of epochs")
    every = _nonneg_int(every, "the checkpoint interval")
    chosen = {_nonneg_int(e, "a checkpoint epoch") for e in epochs}
    late = sorted(e for e in chosen if e > max_epoch)
    if late:
        raise UserError(
            f"checkpoint epoch {late[0]} is after the last epoch {max_epoch}; "
            f"give epochs between 0 and {max_epoch}"
        )
    if every:
        chosen.update(range(0, max_epoch + 1, every))
    if log:
        chosen.update(log_schedule(max_epoch))
    if chosen:
        chosen.update((0, max_epoch))
    return sorted(chosen)


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UserError(f"{what} must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise UserError(f"{what} must be >= 0, got {value}")
    return int(value)


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


def _config_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dict or have .to_dict(), got {type(config).__name__}")
    return _jsonable(config)


class GridCheckpointer:
    """Saves a grid run's checkpoints to ``directory/checkpoints/<epoch>``.

    Nothing is written until the first :meth:`save`.  Use as a context
    manager, or call :meth:`close` at the end.

    Args:
      directory: the run's results directory.
      config: the run's config (a dict, or an object with ``to_dict()`` such
        as ``SweepConfig``), stored in every checkpoint's meta.
      num_classes: number of classes of the model's output.
      input_shape: input shape without the batch axis.
      seeds: seed of each member (length G); by default the config's
        ``member_seeds`` (a ``SweepConfig`` or a sweep config dict).
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        config: Any,
        num_classes: int,
        input_shape: Sequence[int],
        seeds: Sequence[int] | None = None,
    ):
        self.directory = Path(directory).absolute() / CHECKPOINTS  # Orbax needs absolute
        self.config = _config_dict(config)
        if seeds is None:
            seeds = getattr(config, "member_seeds", None)
        if seeds is None:
            from three_regimes_jax.sweep import SweepConfig

            seeds = SweepConfig.from_dict(self.config).member_seeds
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
            with _quiet():
                self._manager = ocp.CheckpointManager(
                    self.directory, options=options, item_handlers=handlers
                )
        return self._manager

    def meta(self, epoch: int, state: GridState, extra: Mapping[str, Any] | None = None) -> dict:
        """The JSON meta saved with ``state`` at ``epoch`` (see module docstring)."""
        g = state.size
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
        state: GridState,
        meta: Mapping[str, Any] | None = None,
        *,
        overwrite: bool = False,
    ) -> Path:
        """Saves the whole grid ``state`` after ``epoch`` epochs, synchronously.

        Args:
          epoch: number of epochs trained (0: the initial state).
          state: the grid state (any sharding; every leaf has the grid axis).
          meta: extra JSON-able meta keys (not one of :data:`META_KEYS`).
          overwrite: replace an existing checkpoint of this epoch.

        Returns:
          The checkpoint's directory ``directory/checkpoints/<epoch>``.

        Raises:
          UserError: a checkpoint of ``epoch`` exists and ``overwrite`` is False.
        """
        epoch = _nonneg_int(epoch, "the checkpoint epoch")
        full_meta = self.meta(epoch, state, meta)
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
        with _quiet():
            manager.reload()  # the step list may have changed (overwrite, other tools)
            manager.save(epoch, args=args, force=True)
            manager.wait_until_finished()
        return path

    def close(self) -> None:
        """Waits for and releases Orbax's resources."""
        if self._manager is not None:
            with _quiet():
                self._manager.close()
            self._manager = None

    def __enter__(self) -> GridCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- loading


def _short(e: BaseException, step_dir: Path | None = None) -> str:
    """A one-line, bounded reason from an Orbax/TensorStore exception.

    TensorStore errors (``"DATA_LOSS: Error opening ... local file "F": cause
    [tensorstore_spec=...]"``) become ``"DATA_LOSS reading F: cause"``, file
    paths relative to the step directory.
    """
    text = str(e).strip()
    text = text.splitlines()[0] if text else ""
    text = text.split(" [tensorstore_spec", 1)[0].split(" [source locations", 1)[0]

    def rel(name: str) -> str:
        if step_dir is not None and name.startswith(str(step_dir)):
            return name[len(str(step_dir)) :].lstrip("/") or "."
        return name

    code = re.match(r"([A-Z][A-Z_]+): ", text)
    files = re.findall(r'local file "([^"]+)"', text)
    if code and files:
        head, _, cause = text.rpartition('": ')
        if head and "local file" not in cause:
            text = f"{code.group(1)} reading {rel(files[-1])}: {cause}"
        else:
            text = re.sub(r'local file "([^"]+)"', lambda m: f'"{rel(m.group(1))}"', text)
    else:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _orbax_failure(epoch: int, ckdir: Path, e: BaseException) -> UserError:
    """The one-line error for a failed Orbax read, after flushing its late callbacks."""
    gc.collect()  # runs abandoned reads' callbacks now, through _drop_closed_loop_errors' hook
    return _unreadable(epoch, ckdir, _short(e, ckdir / str(epoch)))


def _unreadable(epoch: int, ckdir: Path, reason: str) -> UserError:
    return UserError(
        f"checkpoint at epoch {epoch} in {ckdir} is unreadable ({reason}); "
        "delete it or resume from an earlier one"
    )


def _drop_closed_loop_errors() -> None:
    """Hides the stray ``RuntimeError: Event loop is closed`` of a failed Orbax read.

    When one array of a checkpoint cannot be read, Orbax closes its asyncio
    loop while TensorStore reads of other arrays are still running; those
    finish on a TensorStore thread (at once, or when collected) and call back
    into the closed loop, which Python reports on stderr as unraisable
    tracebacks.  The read has already failed with a clear error, so before
    any Orbax read this wraps ``sys.unraisablehook`` (once per process) to
    drop exactly that report; everything else goes to the previous hook.
    """
    prev = sys.unraisablehook
    if getattr(prev, "_drops_closed_loop_errors", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        prev(unraisable)

    hook._drops_closed_loop_errors = True
    sys.unraisablehook = hook


def _reader():
    """An Orbax Checkpointer reading one step's ``state`` and ``meta`` (writes nothing)."""
    _drop_closed_loop_errors()
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
    epoch = _nonneg_int(epoch, "the checkpoint epoch")
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
            raise _unreadable(epoch, ckdir, f"missing {f}")
    ocp = _ocp()
    args = ocp.args.Composite(meta=ocp.args.JsonRestore())
    try:
        with _quiet():
            meta = _reader().restore(path, args=args)["meta"]
    except Exception as e:  # noqa: BLE001 - any Orbax/JSON failure means unreadable
        raise _orbax_failure(epoch, ckdir, e) from None
    missing = [k for k in META_KEYS if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise _unreadable(epoch, ckdir, f"meta lacks {', '.join(missing)}")
    return meta


def _saved_leaves(ckdir: Path, epoch: int) -> dict[str, tuple[tuple[int, ...], str]]:
    """Leaf path -> (shape, dtype) of the saved state, from Orbax's metadata."""
    try:
        with _quiet():
            md = _reader().metadata(ckdir / str(epoch))
        tree = md.item_metadata["state"]
        tree = getattr(tree, "tree", tree)
        if tree is None:
            raise ValueError("no state metadata")
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {_path_str(p): (tuple(m.shape), str(np.dtype(m.dtype))) for p, m in flat}
    except Exception as e:  # noqa: BLE001 - any Orbax failure means unreadable
        raise _orbax_failure(epoch, ckdir, e) from None


def _path_str(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): (tuple(np.shape(x)), str(np.dtype(x.dtype))) for p, x in flat}


def _tree_difference(saved: dict, wanted: dict) -> str | None:
    """The first difference between saved and wanted leaves, in words, or None."""
    g_saved = {s[0] for s, _ in saved.values() if s}
    g_wanted = {s[0] for s, _ in wanted.values() if s}
    if len(g_saved) == 1 and len(g_wanted) == 1 and g_saved != g_wanted:
        return f"the checkpoint holds {g_saved.pop()} members, {g_wanted.pop()} expected"
    for path, (shape, dtype) in wanted.items():
        if path not in saved:
            return f"leaf {path} is missing from the checkpoint"
        s_shape, s_dtype = saved[path]
        if s_shape != shape:
            return f"leaf {path} has shape {s_shape} in the checkpoint, {shape} expected"
        if s_dtype != dtype:
            return f"leaf {path} has dtype {s_dtype} in the checkpoint, {dtype} expected"
    extra = [p for p in saved if p not in wanted]
    if extra:
        return f"the checkpoint has an extra leaf {extra[0]}"
    return None


def _norm(v: Any) -> Any:
    return [_norm(x) for x in v] if isinstance(v, list | tuple) else v


def config_difference(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """The first model-defining config field that differs, in words, or None.

    Compares ``model``, ``dataset``, ``train_last_layer`` and the model's shape
    fields (MLP-SI: ``hidden``; ConvNetSI: ``width``, ``depth``; other models:
    all of them), each only when both configs have it.
    """
    model = saved.get("model")
    fields = ("model", "dataset", *_MODEL_FIELDS.get(model, _GENERIC_FIELDS), "train_last_layer")
    for f in fields:
        if f in saved and f in wanted and _norm(saved[f]) != _norm(wanted[f]):
            return f"{f} is {_norm(saved[f])!r} there, {_norm(wanted[f])!r} here"
    return None


def abstract_state(meta: Mapping[str, Any]) -> GridState:
    """The shapes and dtypes (``jax.ShapeDtypeStruct``) of a checkpoint's ``GridState``.

    Rebuilds the model from ``meta["config"]`` (``SweepConfig`` fields) with
    ``num_classes``, ``input_shape``, ``elr`` and ``seed`` from the meta; runs
    no real initialisation (everything under ``jax.eval_shape``).

    Raises:
      UserError: the config does not describe a model this library can build.
    """
    from three_regimes_jax.sweep import SweepConfig, make_trainer

    try:
        config = SweepConfig.from_dict(meta["config"])
        shape = tuple(int(d) for d in meta["input_shape"])
        num_classes = int(meta["num_classes"])
        elrs, seeds = list(meta["elr"]), [int(s) for s in meta["seed"]]
        # make_trainer inside eval_shape too: its SI-mask init is then abstract
        # (milliseconds instead of seconds of eager op-by-op execution).
        return jax.eval_shape(
            lambda: make_trainer(config, num_classes, shape).init(elrs, seeds, shape)
        )
    except UserError as e:
        raise UserError(f"cannot rebuild the checkpoint's model: {e}") from None
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"cannot rebuild the checkpoint's model from its config ({e})") from None


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
    template: GridState | None = None,
    config: Any = None,
) -> tuple[GridState, dict[str, Any]]:
    """Restores a saved grid and its meta.

    Args:
      directory: a results directory (holding ``checkpoints/``) or the
        checkpoints directory itself.
      epoch: the epoch to load; None: the latest.
      template: a ``GridState`` (arrays or ``ShapeDtypeStruct``) fixing the
        structure, dtypes and sharding to restore into; by default rebuilt
        from the checkpoint's config (on the default device).
      config: the config (dict or ``SweepConfig``) the caller expects the
        checkpoint to match in model and dataset.

    Returns:
      ``(state, meta)``: the ``GridState`` with its grid axis, bit-for-bit as
      saved, and the JSON meta (see module docstring).

    Raises:
      UserError: no checkpoints or no such epoch (lists the available ones);
        the checkpoint is of another model or grid than ``template``/``config``
        (names the first differing field or leaf); it is unreadable.
    """
    ckdir, epoch = _find_epoch(directory, epoch)
    meta = _read_meta(ckdir, epoch)
    if config is not None:
        diff = config_difference(meta["config"], _config_dict(config))
        if diff:
            raise UserError(
                f"checkpoint at epoch {epoch} in {ckdir} is of a different model: {diff}; "
                "use a matching config or another checkpoint"
            )
    saved = _saved_leaves(ckdir, epoch)
    if template is None:
        template = abstract_state(meta)
        what = "the model rebuilt from its config"
    else:
        what = "the template"
    diff = _tree_difference(saved, _leaves(template))
    if diff:
        raise UserError(
            f"checkpoint at epoch {epoch} in {ckdir} does not match {what}: {diff}; "
            "load it with a matching model and grid"
        )
    ocp = _ocp()
    target = _restore_target(template)
    try:
        with _quiet():
            restored = _reader().restore(
                ckdir / str(epoch),
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
            )
    except Exception as e:  # noqa: BLE001
        raise _orbax_failure(epoch, ckdir, e) from None
    return restored["state"], meta


__all__ = [
    "CHECKPOINTS",
    "META_KEYS",
    "GridCheckpointer",
    "abstract_state",
    "available_epochs",
    "checkpoint_dir",
    "checkpoint_epochs",
    "config_difference",
    "latest_epoch",
    "load_checkpoint",
    "log_schedule",
    "read_meta",
]
