"""Comparing checkpoints with what a caller wants: leaf shapes and model-defining config.

Pure helpers of :mod:`three_regimes_jax.storage.checkpoint`: the first
difference between a saved tree and a template, and between two configs'
model-defining fields, in words for a one-line error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from three_regimes_jax.config import Config
from three_regimes_jax.errors import UserError

_SHAPE_FIELDS = {"mlp_si": ("hidden",), "convnet_si": ("width", "depth")}
_GENERIC_FIELDS = ("width", "depth", "hidden")


def path_str(path: Sequence[Any]) -> str:
    """A pytree key path as ``a/b/0``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaves(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """Leaf path -> (shape, dtype) of a pytree of arrays or ``ShapeDtypeStruct``s."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {path_str(p): (tuple(np.shape(x)), str(np.dtype(x.dtype))) for p, x in flat}


def tree_difference(saved: dict, wanted: dict) -> str | None:
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


def _model_defining(config: Mapping[str, Any] | Config, whose: str) -> dict[str, Any]:
    """Name -> value of a config's model-defining fields (JSON form: lists, not tuples)."""
    if not isinstance(config, Config):
        try:
            config = Config.from_dict(config)
        except (TypeError, ValueError) as e:  # UserError is a ValueError
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"{whose} is unreadable ({reason}); "
                "use a checkpoint and config written by three_regimes_jax"
            ) from None
    m = config.model
    fields = {"model": m.name, "dataset": config.data.dataset}
    for f in _SHAPE_FIELDS.get(m.name, _GENERIC_FIELDS):
        fields[f] = getattr(m, f)
    fields["train_last_layer"] = m.train_last_layer
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def config_difference(
    saved: Mapping[str, Any] | Config, wanted: Mapping[str, Any] | Config
) -> str | None:
    """The first model-defining config field that differs, in words, or None.

    Both configs are read with :meth:`Config.from_dict` (the nested format-2
    layout or the flat format-1 one of older checkpoints).  Compares the
    model (``model``), ``dataset``, the model's shape fields (MLP-SI:
    ``hidden``; ConvNetSI: ``width``, ``depth``) and ``train_last_layer``.

    Raises:
      UserError: a config cannot be read (one line).
    """
    a = _model_defining(saved, "the checkpoint's config")
    b = _model_defining(wanted, "the config to compare with")
    for name, value in a.items():
        if name in b and value != b[name]:
            return f"{name} is {value!r} there, {b[name]!r} here"
    return None
