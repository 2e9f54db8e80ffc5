"""MLP-SI for MNIST (paper App. O): 784-300-BN-ReLU-100-BN-ReLU-frozen linear."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
from flax import linen as nn

from three_regimes_jax.engine.models.layers import BatchNorm, FrozenDense, SIDense


class MLPSI(nn.Module):
    """Scale-invariant MLP: ``(SIDense -> BN -> ReLU) x len(hidden) -> FrozenDense``.

    Every trainable weight is followed by an affine-free BatchNorm, so the loss
    is invariant to the scale of each hidden kernel; the last layer is frozen.

    Attributes:
      hidden: widths of the hidden layers (paper: 300, 100).
      num_classes: number of outputs.
      init_scale: Frobenius norm of the frozen last-layer weight (paper: 10).
      train_last_layer: make the last layer trainable (non-SI) instead of frozen.
      bn_momentum: BatchNorm running-statistics momentum (PyTorch convention).
      uses_conv: False: a dense model (``jax.vmap`` over members is the fast path).
    """

    uses_conv: ClassVar[bool] = False
    hidden: Sequence[int] = (300, 100)
    num_classes: int = 10
    init_scale: float = 10.0
    train_last_layer: bool = False
    bn_momentum: float = 0.1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = x.reshape((x.shape[0], -1))
        for h in self.hidden:
            x = nn.relu(BatchNorm(self.bn_momentum)(SIDense(h)(x), train))
        return FrozenDense(self.num_classes, self.init_scale, self.train_last_layer)(x)
