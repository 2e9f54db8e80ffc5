"""SI models (Flax Linen) and their initialisation into separate collections."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from three_regimes_jax.config import MODEL_NAMES
from three_regimes_jax.engine.models.convnet import ConvNetSI
from three_regimes_jax.engine.models.layers import FROZEN, BatchNorm, FrozenDense, SIConv, SIDense
from three_regimes_jax.engine.models.mlp import MLPSI
from three_regimes_jax.engine.sphere import split_si
from three_regimes_jax.errors import UserError

MODELS = MODEL_NAMES
# Inputs ConvNetSI needs: images zero-padded to this size.
CONVNET_INPUT_SIZE = 32
_INPUT_SIZE = {"convnet_si": CONVNET_INPUT_SIZE}


def input_size_of(name: str) -> int | None:
    """The square image size a model needs its inputs zero-padded to (None: any)."""
    return _INPUT_SIZE.get(name)


def build_model(
    name: str,
    num_classes: int,
    *,
    width: int = 32,
    depth: int = 3,
    hidden: tuple[int, ...] = (300, 100),
    init_scale: float = 10.0,
    train_last_layer: bool = False,
) -> nn.Module:
    """Builds a model by name.

    Args:
      name: one of :data:`MODELS`.
      num_classes: number of outputs.
      width: ConvNetSI width ``k``.
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      init_scale: norm of the frozen last-layer weight.
      train_last_layer: train the last layer (non-SI) instead of freezing it.

    Returns:
      A Flax module called as ``module.apply(variables, x, train=...)``.
    """
    if name == "mlp_si":
        return MLPSI(tuple(hidden), num_classes, init_scale, train_last_layer)
    if name == "convnet_si":
        if width < 1:
            raise UserError(f"width must be >= 1, got {width}; pass --width 32 (the paper's)")
        return ConvNetSI(width, depth, num_classes, init_scale, train_last_layer)
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


class ModelVariables(NamedTuple):
    """A model's variables split by role.

    Attributes:
      params: trainable parameters (the SI ones are marked in ``si_mask``).
      batch_stats: BatchNorm running statistics.
      frozen: frozen parameters (the last layer), outside the trainable tree.
      si_mask: boolean pytree over ``params``, from the model's SI declarations.
    """

    params: Any
    batch_stats: Any
    frozen: Any
    si_mask: Any


def init_model(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> ModelVariables:
    """Initialises ``model`` for inputs of shape ``input_shape`` (without batch axis)."""
    x = jnp.zeros((2, *input_shape), jnp.float32)
    variables = model.init({"params": key}, x, train=False)
    params, si_mask = split_si(variables["params"])
    return ModelVariables(
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        frozen=variables.get(FROZEN, {}),
        si_mask=si_mask,
    )


def si_mask_of(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The model's SI mask, from an abstract init (shapes only, no compute)."""
    boxed = jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0)}, jnp.zeros((2, *input_shape), jnp.float32), train=False
        )
    )["params"]
    return split_si(boxed)[1]


__all__ = [
    "CONVNET_INPUT_SIZE",
    "FROZEN",
    "MODELS",
    "BatchNorm",
    "ConvNetSI",
    "FrozenDense",
    "MLPSI",
    "ModelVariables",
    "SIConv",
    "SIDense",
    "build_model",
    "init_model",
    "input_size_of",
    "si_mask_of",
]
