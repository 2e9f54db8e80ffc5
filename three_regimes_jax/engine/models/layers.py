"""Layers shared by the SI models, matching PyTorch's defaults.

- Initialisation: weights and biases uniform in ``±1/sqrt(fan_in)`` (PyTorch's
  ``nn.Linear``/``nn.Conv2d`` defaults), so runs are comparable with the paper.
- :func:`conv2d` / :class:`SIConv`: PyTorch's ``Conv2d`` padding ``(K-1)//2``
  at stride 1 or 2, with a loop-friendly VJP (:func:`conv_fast_vjp`).
- :class:`BatchNorm`: PyTorch semantics (momentum 0.1, eps 1e-5, biased batch
  variance for normalising, unbiased variance for the running estimate), no
  affine parameters by default.
- :class:`FrozenDense`: the frozen last layer.  Its weight is a random init
  rescaled to Frobenius norm ``init_scale``; weight and bias live in the
  ``"frozen"`` collection, outside the trainable ``"params"`` tree.  With
  ``trainable=True`` they are ordinary (non-SI) parameters instead; with
  ``init_scale <= 0`` the weight keeps PyTorch's init.
"""

from __future__ import annotations

import functools
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


_DN = ("NHWC", "HWIO", "NHWC")


def _same_pad(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [((d - 1) // 2, d // 2) for d in shape[:2]]


def _conv_same(x: jax.Array, k: jax.Array, pad: list[tuple[int, int]] | None = None) -> jax.Array:
    """Stride-1 'SAME' convolution, NHWC x HWIO -> NHWC (``pad``: from ``k`` by default)."""
    pad = _same_pad(k.shape) if pad is None else pad
    return jax.lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=_DN)


def conv2d(x: jax.Array, k: jax.Array, stride: int = 1) -> jax.Array:
    """PyTorch's ``Conv2d(kernel_size=K, stride=stride, padding=(K-1)//2, bias=False)``.

    NHWC x HWIO -> NHWC, square odd (or 1x1) kernels, the same padding ``(K-1)//2``
    on both sides of each spatial axis.  Unlike JAX's ``"SAME"``, which pads
    ``(0, 1)`` for a 3x3 kernel at stride 2, this matches PyTorch at any stride.
    """
    p = (k.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(
        x, k, (stride, stride), [(p, p), (p, p)], dimension_numbers=_DN
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_fast(x: jax.Array, k: jax.Array, stride: int) -> jax.Array:
    return conv2d(x, k, stride)


def conv_fast_vjp(x: jax.Array, k: jax.Array, stride: int = 1) -> jax.Array:
    """:func:`conv2d` whose VJP uses only NHWC x HWIO convolutions.

    Inside ``lax.scan`` XLA:CPU lowers the transposed convolutions that JAX's
    own VJP emits with non-canonical layouts, about 12x slower than the same
    step outside a loop (``benchmarks/RESULTS.md``, ``conv_in_loop``).  Here,
    with ``p = (K-1)//2`` and output size ``Ho``:

    - the input gradient is a stride-1 convolution of ``dy`` dilated by
      ``stride`` (``lhs_dilation``) with the flipped, I/O-swapped kernel and
      padding ``(K-1-p, H-1-(Ho-1)*stride+p)``;
    - the kernel gradient is a convolution of ``x`` with ``dy`` as the kernel,
      batch and feature roles exchanged by explicit transposes, ``dy`` dilated
      by ``stride`` (``rhs_dilation``) and padding ``(p, K+(Ho-1)*stride-H-p)``
      (negative: cropped);

    both in the canonical layout.  Reverse mode only (a ``custom_vjp``):
    forward-mode products (the sharpness measures) use :func:`conv2d`, see
    :attr:`SIConv.fast_vjp`.

    Args:
      x: ``[N, H, W, Ci]`` input.
      k: ``[K, K, Ci, Co]`` kernel, ``K`` odd (1 included).
      stride: 1 or 2 (any positive int works).
    """
    return _conv_fast(x, k, stride)


def conv_same_fast_vjp(x: jax.Array, k: jax.Array) -> jax.Array:
    """Stride-1 :func:`conv_fast_vjp` (odd square kernels; 'SAME' output size)."""
    return _conv_fast(x, k, 1)


def _conv_fwd(x, k, stride):
    return conv2d(x, k, stride), (x, k)


def _conv_bwd(s, res, dy):
    x, k = res
    ks, p = k.shape[0], (k.shape[0] - 1) // 2
    (h, w), (ho, wo) = x.shape[1:3], dy.shape[1:3]
    dil = None if s == 1 else (s, s)
    dx = jax.lax.conv_general_dilated(
        dy,
        jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)),
        (1, 1),
        [(ks - 1 - p, n - 1 - (no - 1) * s + p) for n, no in ((h, ho), (w, wo))],
        lhs_dilation=dil,
        dimension_numbers=_DN,
    )
    # [Ci, H, W, N] (*) [Ho, Wo, N, Co] -> [Ci, K, K, Co]
    dk = jax.lax.conv_general_dilated(
        jnp.transpose(x, (3, 1, 2, 0)),
        jnp.transpose(dy, (1, 2, 0, 3)),
        (1, 1),
        [(p, ks + (no - 1) * s - n - p) for n, no in ((h, ho), (w, wo))],
        rhs_dilation=dil,
        dimension_numbers=_DN,
    )
    return dx.astype(x.dtype), jnp.transpose(dk, (1, 2, 0, 3)).astype(k.dtype)


_conv_fast.defvjp(_conv_fwd, _conv_bwd)


class SIConv(nn.Module):
    """Bias-free convolution (PyTorch padding ``(K-1)//2``) with an SI kernel.

    Attributes:
      features: output channels.
      kernel_size: odd square kernel size (3 in the paper; 1 for shortcuts).
      strides: stride of both spatial axes (1 or 2).
      fast_vjp: use :func:`conv_fast_vjp` (reverse mode only; same values
        and gradients to float rounding); ``False`` gives the plain
        :func:`conv2d`, which also supports forward-mode autodiff.
      joint: name of the set of parameters the kernel is SI jointly with
        (e.g. the convolutions that sum into one residual stream); None: SI on
        its own (followed by a normalisation).
      si: declare the kernel SI; False: an ordinary parameter (a convolution
        whose output reaches the loss without a normalisation).
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    fast_vjp: bool = True
    joint: str | None = None
    si: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        fan_in = x.shape[-1] * k * k
        init = torch_uniform(fan_in)
        kernel = self.param(
            "kernel",
            scale_invariant(init, joint=self.joint) if self.si else init,
            (k, k, x.shape[-1], self.features),
        )
        if self.fast_vjp:
            return conv_fast_vjp(x, kernel, self.strides)
        return conv2d(x, kernel, self.strides)


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics over all axes but the last.

    Train mode normalises with the batch mean and biased variance and updates the
    running statistics with the unbiased variance when ``batch_stats`` is mutable;
    eval mode uses the running statistics.

    Attributes:
      momentum: running-statistics momentum (PyTorch convention).
      epsilon: added to the variance.
      affine: learn a per-channel ``scale`` (init 1) and ``bias`` (init 0).
      affine_joint: with ``affine``, declare ``scale`` and ``bias`` SI jointly
        under this set name (they are when the output only feeds convolutions
        followed by a normalisation); None: ordinary parameters.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    affine: bool = False
    affine_joint: str | None = None

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
            ones, zeros = nn.initializers.ones, nn.initializers.zeros
            if self.affine_joint is not None:
                ones = scale_invariant(ones, joint=self.affine_joint)
                zeros = scale_invariant(zeros, joint=self.affine_joint)
            y = y * self.param("scale", ones, (feat,))
            y = y + self.param("bias", zeros, (feat,))
        return y


class FrozenDense(nn.Module):
    """Last linear layer, frozen at a random init rescaled to norm ``init_scale``.

    Attributes:
      features: number of outputs (classes).
      init_scale: Frobenius norm of the weight; ``<= 0`` keeps PyTorch's init.
      trainable: put weight and bias in ``"params"`` (non-SI, trainable) instead
        of the ``"frozen"`` collection.
      use_bias: add a bias (PyTorch init); False: no bias variable at all.
    """

    features: int
    init_scale: float = 10.0
    trainable: bool = False
    use_bias: bool = True

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
            bias = self.param("bias", init, shape_b) if self.use_bias else None
        else:
            # The init functions run only at model.init (an rng is needed only then).
            kernel = self.variable(
                FROZEN, "kernel", lambda: kernel_init(self.make_rng("params"), shape_w)
            ).value
            bias = None
            if self.use_bias:
                bias = self.variable(
                    FROZEN, "bias", lambda: init(self.make_rng("params"), shape_b)
                ).value
        y = x @ kernel
        return y if bias is None else y + bias
