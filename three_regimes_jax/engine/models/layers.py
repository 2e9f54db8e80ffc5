"""Layers shared by the SI models, matching PyTorch's defaults.

- Initialisation: weights and biases uniform in ``±1/sqrt(fan_in)`` (PyTorch's
  ``nn.Linear``/``nn.Conv2d`` defaults), so runs are comparable with the paper.
- :class:`BatchNorm`: PyTorch semantics (momentum 0.1, eps 1e-5, biased batch
  variance for normalising, unbiased variance for the running estimate), no
  affine parameters by default.
- :class:`FrozenDense`: the frozen last layer.  Its weight is a random init
  rescaled to Frobenius norm ``init_scale``; weight and bias live in the
  ``"frozen"`` collection, outside the trainable ``"params"`` tree.  With
  ``trainable=True`` they are ordinary (non-SI) parameters instead.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

from three_regimes_jax.engine.sphere import scale_invariant

FROZEN = "frozen"


def torch_uniform(fan_in: int):
    """Initializer drawing uniformly from ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class SIDense(nn.Module):
    """Bias-free dense layer whose kernel is declared scale-invariant.

    Only SI when followed by a normalisation (BatchNorm): a bias before BN is
    redundant (BN removes it), so there is none.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param(
            "kernel", scale_invariant(torch_uniform(fan_in)), (fan_in, self.features)
        )
        return x @ kernel


def _same_pad(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [((d - 1) // 2, d // 2) for d in shape[:2]]


def _conv_same(x: jax.Array, k: jax.Array, pad: list[tuple[int, int]] | None = None) -> jax.Array:
    """Stride-1 'SAME' convolution, NHWC x HWIO -> NHWC (``pad``: from ``k`` by default)."""
    pad = _same_pad(k.shape) if pad is None else pad
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def conv_same_fast_vjp(x: jax.Array, k: jax.Array) -> jax.Array:
    """:func:`_conv_same` (odd square kernels) whose VJP uses only NHWC x HWIO convolutions.

    Inside ``lax.scan`` XLA:CPU lowers the transposed convolutions that JAX's
    own VJP emits with non-canonical layouts, about 12x slower than the same
    step outside a loop (``benchmarks/RESULTS.md``, ``conv_in_loop``).  Here the
    input gradient is a convolution of ``dy`` with the flipped kernel (I/O
    swapped) and the kernel gradient a convolution with the batch and feature
    roles exchanged by explicit transposes, both in the canonical layout.
    Reverse mode only (a ``custom_vjp``): forward-mode products (the sharpness
    measures) use the plain convolution, see :attr:`SIConv.fast_vjp`.
    """
    return _conv_same(x, k)


def _conv_fwd(x, k):
    return _conv_same(x, k), (x, k)


def _conv_bwd(res, dy):
    x, k = res
    dx = _conv_same(dy, jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)))
    # [Ci, H, W, N] (*) [H, W, N, Co] -> [Ci, kh, kw, Co]
    dk = _conv_same(
        jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), _same_pad(k.shape)
    )
    return dx, jnp.transpose(dk, (1, 2, 0, 3)).astype(k.dtype)


conv_same_fast_vjp.defvjp(_conv_fwd, _conv_bwd)


class SIConv(nn.Module):
    """Bias-free convolution (stride 1, 'SAME' padding) with an SI kernel.

    Attributes:
      features: output channels.
      kernel_size: odd square kernel size (3 in the paper).
      fast_vjp: use :func:`conv_same_fast_vjp` (reverse mode only; same values
        and gradients to float rounding); ``False`` gives the plain
        convolution, which also supports forward-mode autodiff.
    """

    features: int
    kernel_size: int = 3
    fast_vjp: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = x.shape[-1] * k * k
        kernel = self.param(
            "kernel",
            scale_invariant(torch_uniform(fan_in)),
            (k, k, x.shape[-1], self.features),
        )
        conv = conv_same_fast_vjp if self.fast_vjp else _conv_same
        return conv(x, kernel)


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics over all axes but the last.

    Train mode normalises with the batch mean and biased variance and updates the
    running statistics with the unbiased variance when ``batch_stats`` is mutable;
    eval mode uses the running statistics.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        feat = x.shape[-1]
        mean_v = self.variable("batch_stats", "mean", lambda: jnp.zeros((feat,), jnp.float32))
        var_v = self.variable("batch_stats", "var", lambda: jnp.ones((feat,), jnp.float32))
        axes = tuple(range(x.ndim - 1))
        if train:
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                mean_v.value = (1 - self.momentum) * mean_v.value + self.momentum * mean
                var_v.value = (1 - self.momentum) * var_v.value + self.momentum * unbiased
        else:
            mean, var = mean_v.value, var_v.value
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (feat,))
            y = y + self.param("bias", nn.initializers.zeros, (feat,))
        return y


class FrozenDense(nn.Module):
    """Last linear layer, frozen at a random init rescaled to norm ``init_scale``.

    Attributes:
      features: number of outputs (classes).
      init_scale: Frobenius norm of the weight; ``<= 0`` keeps PyTorch's init.
      trainable: put weight and bias in ``"params"`` (non-SI, trainable) instead
        of the ``"frozen"`` collection.
    """

    features: int
    init_scale: float = 10.0
    trainable: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init = torch_uniform(fan_in)
        scale = self.init_scale

        def kernel_init(key, shape):
            w = init(key, shape)
            return w * (scale / jnp.linalg.norm(w)) if scale > 0 else w

        shape_w, shape_b = (fan_in, self.features), (self.features,)
        if self.trainable:
            kernel = self.param("kernel", kernel_init, shape_w)
            bias = self.param("bias", init, shape_b)
        else:
            # The init functions run only at model.init (an rng is needed only then).
            kernel = self.variable(
                FROZEN, "kernel", lambda: kernel_init(self.make_rng("params"), shape_w)
            ).value
            bias = self.variable(
                FROZEN, "bias", lambda: init(self.make_rng("params"), shape_b)
            ).value
        return x @ kernel + bias
