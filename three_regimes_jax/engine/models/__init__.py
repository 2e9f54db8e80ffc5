"""SI models (Flax Linen) and their initialisation into separate collections."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from three_regimes_jax.config import DEFAULT_WIDTH, MODEL_NAMES, Config
from three_regimes_jax.engine.models.convnet import ConvNetSI
from three_regimes_jax.engine.models.layers import FROZEN, BatchNorm, FrozenDense, SIConv, SIDense
from three_regimes_jax.engine.models.mlp import MLPSI
from three_regimes_jax.engine.models.resnet import ResNet18SI
from three_regimes_jax.engine.models.transformer import Transformer
from three_regimes_jax.engine.sphere import si_sets, split_si
from three_regimes_jax.errors import UserError

MODELS = MODEL_NAMES
# Inputs the ConvNets and ResNets need: images zero-padded to this size.
CONVNET_INPUT_SIZE = 32
_INPUT_SIZE = {
    name: CONVNET_INPUT_SIZE
    for name in ("convnet_si", "convnet_si_af", "resnet18_si", "resnet18_si_af", "resnet18")
}


def input_size_of(name: str) -> int | None:
    """The square image size a model needs its inputs zero-padded to (None: any)."""
    return _INPUT_SIZE.get(name)


def build_model(
    name: str,
    num_classes: int,
    *,
    width: int | None = None,
    depth: int = 3,
    hidden: tuple[int, ...] = (300, 100),
    init_scale: float = 10.0,
    train_last_layer: bool = False,
    **text: Any,
) -> nn.Module:
    """Builds a model by name.

    Args:
      name: one of :data:`MODELS`.
      num_classes: number of outputs.
      width: width factor ``k`` of the ConvNets and ResNets (None: the model's
        default, :data:`~three_regimes_jax.config.DEFAULT_WIDTH`).
      depth: ConvNetSI depth.
      hidden: MLP-SI hidden widths.
      init_scale: norm of the frozen last-layer weight (SI models).
      train_last_layer: train the last layer (non-SI) instead of freezing it.
      **text: the Transformer's attributes (``vocab_size``, ``max_len``,
        ``d_model``, ``num_heads``, ``num_layers``, ``d_ff``, ``positional``,
        ``pooling``, ``dropout``).

    Returns:
      A Flax module called as ``module.apply(variables, x, train=...)``.
    """
    if name in DEFAULT_WIDTH:
        width = DEFAULT_WIDTH[name] if width is None else width
        if width < 1:
            raise UserError(f"width must be >= 1, got {width}; pass --width 32 (the paper's)")
    if name == "mlp_si":
        return MLPSI(tuple(hidden), num_classes, init_scale, train_last_layer)
    if name == "convnet_si":
        return ConvNetSI(width, depth, num_classes, init_scale, train_last_layer)
    if name == "convnet_si_af":
        # Everything trainable: affine BN (gamma 1, beta 0) and a PyTorch-initialised head.
        return ConvNetSI(width, depth, num_classes, 0.0, True, affine=True)
    if name == "resnet18_si":
        return ResNet18SI(width, num_classes, init_scale, train_last_layer=train_last_layer)
    if name == "resnet18_si_af":
        return ResNet18SI(width, num_classes, 0.0, affine=True, train_last_layer=True)
    if name == "resnet18":
        return ResNet18SI(
            width, num_classes, 0.0, affine=True, train_last_layer=True, si_extras=False
        )
    if name == "transformer":
        return Transformer(num_classes=num_classes, **text)
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")


def build_model_from_config(config: Config, num_classes: int) -> nn.Module:
    """The model of a config (:class:`~three_regimes_jax.config.ModelConfig`)."""
    m = config.model
    text = {}
    if m.name == "transformer":
        text = dict(
            vocab_size=config.data.vocab_size,
            max_len=config.data.max_len,
            d_model=m.d_model,
            num_heads=m.heads,
            num_layers=m.layers,
            d_ff=m.d_ff,
            positional=m.positional,
            pooling=m.pooling,
            dropout=m.dropout,
        )
    return build_model(
        m.name,
        num_classes,
        width=m.width,
        depth=m.depth,
        hidden=m.hidden,
        init_scale=m.init_scale,
        train_last_layer=m.train_last_layer,
        **text,
    )


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


def _boxed_params(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    return jax.eval_shape(
        lambda: model.init(
            {"params": jax.random.key(0)}, jnp.zeros((2, *input_shape), jnp.float32), train=False
        )
    )["params"]


def si_mask_of(model: nn.Module, input_shape: tuple[int, ...]) -> Any:
    """The model's SI mask, from an abstract init (shapes only, no compute)."""
    return split_si(_boxed_params(model, input_shape))[1]


def si_sets_of(model: nn.Module, input_shape: tuple[int, ...]) -> list[str | None]:
    """The joint-SI set of each SI group (None: individually SI), see ``sphere.si_sets``."""
    return si_sets(_boxed_params(model, input_shape))


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
    "ResNet18SI",
    "Transformer",
    "build_model",
    "build_model_from_config",
    "init_model",
    "input_size_of",
    "si_mask_of",
    "si_sets_of",
]
