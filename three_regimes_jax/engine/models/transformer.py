"""Encoder-only Transformer for AG News (paper App. O): N=1, d_model=32, h=1.

The paper adds a LayerNorm after each fully-connected layer of the feed-forward
sub-layer, ``FF(x) = LN(W2 ReLU(LN(W1 x)))``, to make the network "more
scale-invariant"; it is still not scale-invariant overall (embeddings,
attention projections, LayerNorm affines and the classifier are not).  Only the
two FF kernels are declared SI: a LayerNorm directly normalises each of their
outputs per token, so scaling either kernel by ``c > 0`` leaves the logits
unchanged (up to the LayerNorm epsilon).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from three_regimes_jax.engine.models.layers import torch_uniform
from three_regimes_jax.engine.sphere import scale_invariant
from three_regimes_jax.errors import UserError

PAD_ID = 0
POSITIONAL = ("sinusoidal", "learned")
POOLING = ("mean", "first")
LN_EPS = 1e-5  # PyTorch's nn.LayerNorm default


def sinusoidal_encoding(length: int, d_model: int) -> np.ndarray:
    """Vaswani et al.'s positional encoding: ``sin`` / ``cos`` of ``pos / 10000^(2i/d)``.

    Returns:
        float32 ``[length, d_model]``; even columns ``sin``, odd columns ``cos``.
    """
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-math.log(10000.0) * np.arange(0, d_model, 2) / d_model)
    pe = np.zeros((length, d_model))
    pe[:, 0::2] = np.sin(pos * freq)
    pe[:, 1::2] = np.cos(pos * freq)[:, : d_model // 2]
    return pe.astype(np.float32)


class TorchDense(nn.Module):
    """Dense layer with PyTorch's ``nn.Linear`` init (weight and bias ``U(±1/sqrt(fan_in))``).

    Attributes:
      features: number of outputs.
      use_bias: add a bias.
      si: declare the kernel scale-invariant (only valid without a bias and
        when a normalisation directly follows).

    Inputs of any rank are flattened to ``[N, fan_in]`` for the product: XLA:CPU
    computed the gradient of ``relu([128, 64, 32] @ [32, 128])`` about 4.6x
    slower than that of the same product on ``[8192, 32]`` (9.6 ms vs 2.1 ms on
    2 shared cores, ``jax.jit(jax.grad(...))`` of both forms, 20 calls each);
    the values are the same.
    """

    features: int
    use_bias: bool = True
    si: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        init = torch_uniform(fan_in)
        kernel_init = scale_invariant(init) if self.si else init
        kernel = self.param("kernel", kernel_init, (fan_in, self.features))
        y = (x.reshape(-1, fan_in) @ kernel).reshape(*x.shape[:-1], self.features)
        if self.use_bias:
            y = y + self.param("bias", init, (self.features,))
        return y


def _layer_norm(name: str) -> nn.LayerNorm:
    # Exact two-pass variance: the SI test compares logits after scaling a kernel.
    return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, name=name)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with a key padding mask.

    Attributes:
      d_model: model width (divisible by ``num_heads``).
      num_heads: number of heads.
      dropout: dropout rate on the attention weights.
    """

    d_model: int
    num_heads: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, h: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
        b, length, _ = h.shape
        hd = self.d_model // self.num_heads

        def heads(name: str) -> jax.Array:
            return TorchDense(self.d_model, name=name)(h).reshape(b, length, self.num_heads, hd)

        q, k, v = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        # A finite big negative (not -inf): an all-padding row attends uniformly, no NaN.
        logits = jnp.where(keep[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, length, self.d_model)
        return TorchDense(self.d_model, name="out")(out)


class EncoderLayer(nn.Module):
    """Post-LN encoder layer with the paper's LayerNorms inside the feed-forward block.

    ``h = LN(h + Drop(Attn(h)))``, then ``h = LN(h + Drop(FF(h)))`` with
    ``FF(h) = LN(W_out Drop(ReLU(LN(W_in h))))``.

    Attributes:
      d_model: model width.
      num_heads: attention heads.
      d_ff: hidden width of the feed-forward block.
      dropout: dropout rate (sub-layer outputs, attention weights, FF hidden).
      ff_bias: give the FF layers biases; then their kernels are not SI on their
        own (only jointly with the bias) and are not declared SI.
    """

    d_model: int
    num_heads: int
    d_ff: int
    dropout: float = 0.0
    ff_bias: bool = False

    @nn.compact
    def __call__(self, h: jax.Array, keep: jax.Array, deterministic: bool) -> jax.Array:
        drop = nn.Dropout(self.dropout)
        a = SelfAttention(self.d_model, self.num_heads, self.dropout, name="attention")(
            h, keep, deterministic
        )
        h = _layer_norm("ln_attention")(h + drop(a, deterministic=deterministic))
        si = not self.ff_bias
        f = TorchDense(self.d_ff, use_bias=self.ff_bias, si=si, name="ff_in")(h)
        f = nn.relu(_layer_norm("ln_ff_in")(f))
        f = drop(f, deterministic=deterministic)
        f = TorchDense(self.d_model, use_bias=self.ff_bias, si=si, name="ff_out")(f)
        f = _layer_norm("ln_ff_out")(f)
        return _layer_norm("ln_ff")(h + drop(f, deterministic=deterministic))


class Transformer(nn.Module):
    """Encoder-only Transformer classifier for AG News (paper App. O).

    ``token ids -> embedding + positional encoding -> num_layers x EncoderLayer
    -> pooling -> Dense(num_classes)``.  Token id 0 (padding) is masked out of
    the attention keys and of the pooling, so appending padding does not change
    the output.

    The paper gives only ``N = 1``, ``d_model = 32``, ``h = 1`` and the extra
    LayerNorms; the rest is chosen here:

    - ``d_ff = 128 = 4 * d_model``: the ratio of Vaswani et al. (512 / 2048).
    - ``vocab_size`` and ``max_len`` come from the data pipeline
      (:func:`~three_regimes_jax.engine.data.ag_news.load_ag_news`, default
      20,000 ids and 64 tokens; AG News title + description is ~45 words).
    - Positional encoding ``"sinusoidal"`` (Vaswani et al.; no parameters, any
      length up to ``max_len``) or ``"learned"`` (a ``[max_len, d_model]``
      table, N(0, 1) like ``nn.Embedding``).
    - Post-LN residual blocks, as in the original Transformer (and PyTorch's
      ``nn.TransformerEncoderLayer`` default), with LayerNorm affines
      (PyTorch's default ``elementwise_affine=True``, trainable) and
      epsilon 1e-5.
    - FF layers without bias (``ff_bias=False``): a LayerNorm removes only the
      per-token mean over features, so a bias before it is not redundant and
      ``LN(cWx + b) != LN(Wx + b)``; without it each FF kernel is exactly SI,
      which is the point of the paper's modification (as the bias-free
      convolutions before BN in its ResNet).  ``ff_bias=True`` gives PyTorch's
      ``nn.Linear`` default instead, and then no parameter is declared SI.
    - Pooling ``"mean"`` over the non-padding tokens (an all-padding row pools
      to zeros), or ``"first"`` (the first token's output).
    - The token embedding is N(0, 1) (``nn.Embedding``'s init) and not scaled by
      ``sqrt(d_model)``: its entries already have the scale of the sinusoidal
      encoding (within [-1, 1]).  The padding row is an ordinary row (never
      used: padding is masked).
    - Dense layers (attention projections, FF, classifier) use PyTorch's
      ``nn.Linear`` init, ``U(±1/sqrt(fan_in))`` for weight and bias.
    - ``dropout = 0.0`` by default (the paper does not mention dropout).  When
      > 0 it acts on the embeddings, attention weights, FF hidden units and
      sub-layer outputs, and ONLY if the caller passes a ``"dropout"`` PRNG
      stream (``rngs={"dropout": key}``); without it (metric passes, eval) the
      model is deterministic whatever ``train`` is.

    All parameters live in ``"params"`` and are trainable; there is no
    BatchNorm state and no frozen layer.

    Attributes:
      vocab_size: number of token ids (embedding rows); ids must be smaller
        (``jnp.take`` fills out-of-range rows with NaN, so the logits show it).
      num_classes: number of outputs (4 for AG News).
      max_len: longest input sequence accepted.
      d_model: model width (paper: 32).
      num_heads: attention heads (paper: 1).
      num_layers: encoder layers (paper: 1).
      d_ff: feed-forward hidden width.
      positional: ``"sinusoidal"`` or ``"learned"``.
      pooling: ``"mean"`` or ``"first"``.
      dropout: dropout rate, used only with a ``"dropout"`` rng.
      ff_bias: biases in the FF layers (then nothing is declared SI).
      uses_conv: False: a dense model (``jax.vmap`` over members is the fast path).
    """

    uses_conv: ClassVar[bool] = False
    vocab_size: int
    num_classes: int
    max_len: int
    d_model: int = 32
    num_heads: int = 1
    num_layers: int = 1
    d_ff: int = 128
    positional: str = "sinusoidal"
    pooling: str = "mean"
    dropout: float = 0.0
    ff_bias: bool = False

    def _check(self, length: int) -> None:
        if self.positional not in POSITIONAL:
            raise UserError(
                f"unknown positional encoding {self.positional!r}; choose one of: "
                + ", ".join(POSITIONAL)
            )
        if self.pooling not in POOLING:
            raise UserError(f"unknown pooling {self.pooling!r}; choose one of: mean, first")
        if self.d_model % self.num_heads:
            raise UserError(
                f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}"
            )
        if length > self.max_len:
            raise UserError(f"input has {length} tokens but max_len is {self.max_len}")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits ``[B, num_classes]`` of token ids ``x`` ``[B, L]`` (any dtype, cast to int32).

        ``train`` is accepted for the common model signature and ignored: there is
        no BatchNorm, and dropout is switched by the presence of a ``"dropout"``
        rng, not by ``train``.
        """
        del train
        tokens = jnp.asarray(x).astype(jnp.int32)  # init passes float zeros
        length = tokens.shape[1]
        self._check(length)
        deterministic = self.dropout == 0.0 or not self.has_rng("dropout")
        keep = tokens != PAD_ID
        embedding = self.param(
            "embedding", nn.initializers.normal(1.0), (self.vocab_size, self.d_model)
        )
        h = jnp.take(embedding, tokens, axis=0)
        if self.positional == "learned":
            table = self.param(
                "pos_embedding", nn.initializers.normal(1.0), (self.max_len, self.d_model)
            )
            h = h + table[:length]
        else:
            h = h + jnp.asarray(sinusoidal_encoding(length, self.d_model))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        for i in range(self.num_layers):
            h = EncoderLayer(
                self.d_model,
                self.num_heads,
                self.d_ff,
                self.dropout,
                self.ff_bias,
                name=f"layer_{i}",
            )(h, keep, deterministic)
        if self.pooling == "first":
            pooled = h[:, 0]
        else:
            w = keep.astype(h.dtype)[..., None]
            pooled = (h * w).sum(axis=1) / jnp.maximum(w.sum(axis=1), 1.0)
        return TorchDense(self.num_classes, name="head")(pooled)
