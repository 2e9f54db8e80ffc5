"""ConvNetSI (paper App. C): the 5-layer CNN with affine-free BatchNorm and a frozen head."""

from __future__ import annotations

import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen as nn

from three_regimes_jax.engine.models.layers import BatchNorm, FrozenDense, SIConv


def _max_pool(x: jax.Array, k: int) -> jax.Array:
    """``k x k`` max pooling with stride ``k`` and no padding (as ``nn.max_pool``, VALID).

    A max over reshaped axes rather than ``nn.max_pool``: XLA:CPU lowers the
    latter's gradient (select-and-scatter) to index tensors and a scatter,
    3x slower for the whole pooling (``benchmarks/profile_step.py``).  The
    values are identical.  The gradient differs only at ties inside a window,
    which it splits among them instead of giving all to the first.  Here every
    pool follows a ReLU, where ties are zeros whose ReLU gradient is 0, so the
    parameter gradients are bit-identical (``tests/test_models.py``).
    """
    b, h, w, c = x.shape
    h, w = h // k, w // k
    x = x[:, : h * k, : w * k]
    return jnp.max(x.reshape(b, h, k, w, k, c), axis=(2, 4))


class ConvNetSI(nn.Module):
    """ConvNetSI of width ``k`` and depth 3 (the paper's default).

    ``conv3x3(k) -> BN -> ReLU``, then three stages of ``conv3x3 -> BN -> ReLU ->
    maxpool 2`` with ``2k, 4k, 8k`` channels, then ``maxpool 4``, flatten and a
    frozen linear layer (weight rescaled to norm ``init_scale``).  Convolutions
    have no bias (redundant before BN) and BN has no affine parameters, so every
    trainable parameter is scale-invariant.  Input is ``[B, 32, 32, C]``.

    For ``depth != 3`` the stages are built as in the paper's code: stage ``j``
    holds ``depth // 3 + (depth % 3 > j)`` blocks; only its last block doubles the
    width and pools; with ``depth < 3`` the final pooling grows to cover 32x32.

    Attributes:
      width: ``k``, channels of the first layer.
      depth: number of stages' blocks (3 in the paper).
      num_classes: number of outputs.
      init_scale: Frobenius norm of the frozen last-layer weight (paper: 10).
      train_last_layer: make the last layer trainable (non-SI) instead of frozen.
      affine: BatchNorm with a trainable per-channel scale (init 1) and bias
        (init 0), as the official ``ConvNetSIAf``; the kernels stay SI (each is
        followed by its BN).  ``ConvNetSIAf`` is this with
        ``train_last_layer=True, init_scale=0`` (head at PyTorch's init).
      bn_momentum: BatchNorm running-statistics momentum (PyTorch convention).
      fast_vjp: convolutions with the loop-friendly VJP (see
        :func:`~three_regimes_jax.engine.models.layers.conv_same_fast_vjp`); set False
        for forward-mode autodiff (``jax.jvp``), as the sharpness measures do.
      uses_conv: True: the grid strategy ``auto`` runs conv models member by member
        on CPU (see ``engine.grid.choose_strategy``).
    """

    uses_conv: ClassVar[bool] = True
    width: int = 32
    depth: int = 3
    num_classes: int = 10
    init_scale: float = 10.0
    train_last_layer: bool = False
    bn_momentum: float = 0.1
    fast_vjp: bool = True
    affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        c = self.width
        bn = functools.partial(BatchNorm, self.bn_momentum, affine=self.affine)
        x = nn.relu(bn()(SIConv(c, fast_vjp=self.fast_vjp)(x), train))
        for stage in range(3):
            n_blocks = self.depth // 3 + int(self.depth % 3 > stage)
            for b in range(n_blocks):
                last = b == n_blocks - 1
                c = 2 * c if last else c
                x = nn.relu(bn()(SIConv(c, fast_vjp=self.fast_vjp)(x), train))
                if last:
                    x = _max_pool(x, 2)
        pool = 4 * (2 * (3 - self.depth) if self.depth < 3 else 1)
        x = _max_pool(x, pool)
        x = x.reshape((x.shape[0], -1))
        return FrozenDense(self.num_classes, self.init_scale, self.train_last_layer)(x)
