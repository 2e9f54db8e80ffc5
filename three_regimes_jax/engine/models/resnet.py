"""ResNet18SI (paper App. C): pre-activation ResNet-18 of width ``k`` for 32x32 images.

Follows the official PyTorch code (``nets/resnet_si.py``, ``nets/resnet_si_af.py``
and ``nets/resnet.py`` of ``tipt0p/periodic_behavior_bn_wd``, identical in
``tipt0p/three_regimes_on_the_sphere``), itself the pre-activation ResNet-18 of
``kuangliu/pytorch-cifar`` with a width parameter.

Which parameters are scale-invariant (SI), and with which others
----------------------------------------------------------------
Write ``s_j`` for the residual stream of stage ``j`` (what its blocks add to).

- Each block's ``conv1`` is followed by ``bn2``: SI on its own.
- ``s_j`` is a sum of convolutions: the stem (``j = 1``) or the first block's
  shortcut convolution (``j > 1``), plus both blocks' ``conv2``.  It reaches the
  loss only through normalisations: the blocks' ``bn1`` (stage ``j`` and the next
  stage's first block, whose shortcut convolves ``relu(bn1(s_j))`` and so never
  passes ``s_j`` on) or, for ``s_4``, the final BN.  Scaling the three
  convolutions of one stream together scales ``s_j`` and leaves the output
  unchanged; scaling one alone does not.  They are declared SI jointly
  (``joint="stream<j>"``).
- The extra BN in front of each shortcut convolution (``si_extras``) makes no
  difference to these sets; the final BN is what makes ``s_4`` SI.

So all 20 convolution kernels are SI in ``ResNet18SI`` and ``ResNet18SIAf``; 8
(the ``conv1``) individually, 12 in four joint sets of three.  The official
``ResNet18SIAf`` counts the same 20 kernels as SI and no BN parameter.

The conventional ResNet-18 (``si_extras=False``, the official ``nets/resnet.py``)
has no final BN, so ``s_4`` (``layer4_0/shortcut``, ``layer4_*/conv2``) is not SI
and those three kernels are ordinary parameters: 17 SI kernels.

With affine BNs, the ``bn1`` of the five blocks without a shortcut convolution
(``layer1_0``, ``layer*_1``) only feeds ``conv1``, itself followed by ``bn2``:
its ``scale`` and ``bias`` are SI jointly.  ``bn_si=True`` declares them so
(joint set ``"layer<j>_<b>/bn1"``), as the official ``check_si_name`` does for
``ResNet18`` (17 kernels and 10 BN vectors), though not for ``ResNet18SIAf``.
Off by default: the declared SI parameters are then exactly the SI kernels, and
no SI leaf starts at norm 0 (the BN biases do).
"""

from __future__ import annotations

from typing import ClassVar

import jax
from flax import linen as nn

from three_regimes_jax.engine.models.layers import BatchNorm, FrozenDense, SIConv

STAGES = 4
BLOCKS_PER_STAGE = 2


class PreActBlock(nn.Module):
    """``relu(bn1(x))`` -> ``conv1`` (stride s) -> ``relu(bn2)`` -> ``conv2``, plus shortcut.

    The shortcut is ``x`` itself, or (``stride != 1`` or a change of width) a 1x1
    convolution of ``relu(bn1(x))`` with stride ``s``; with ``si_extras`` a BN
    (``shortcut_bn``) comes before that convolution, as in the official SI code.

    Attributes:
      planes: output channels.
      stride: stride of ``conv1`` and of the shortcut convolution.
      stream: name of the residual stream's joint SI set (``conv2`` and the
        shortcut convolution belong to it).
      stream_si: declare the stream's convolutions SI (False when the stream
        reaches the loss without a normalisation).
      bn1_si: with ``affine``, declare ``bn1``'s scale and bias SI jointly (only
        valid without a shortcut convolution).
      affine: BatchNorms with trainable scale and bias.
      si_extras: the BN in front of the shortcut convolution.
      bn_momentum: BatchNorm running-statistics momentum.
      fast_vjp: convolutions with the loop-friendly VJP.
    """

    planes: int
    stride: int = 1
    stream: str = "stream1"
    stream_si: bool = True
    bn1_si: bool = False
    affine: bool = False
    si_extras: bool = True
    bn_si: bool = False
    bn_momentum: float = 0.1
    fast_vjp: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def bn(name: str, joint: str | None = None) -> BatchNorm:
            return BatchNorm(self.bn_momentum, affine=self.affine, affine_joint=joint, name=name)

        def conv(name: str, kernel_size: int, stride: int, **kw) -> SIConv:
            return SIConv(self.planes, kernel_size, stride, fast_vjp=self.fast_vjp, name=name, **kw)

        has_shortcut = self.stride != 1 or x.shape[-1] != self.planes
        bn1_joint = f"{self.name}/bn1" if self.bn1_si and self.affine else None
        out = nn.relu(bn("bn1", bn1_joint)(x, train))
        if has_shortcut:
            sc = bn("shortcut_bn")(out, train) if self.si_extras else out
            sc = conv("shortcut", 1, self.stride, joint=self.stream, si=self.stream_si)(sc)
        else:
            sc = x
        out = conv("conv1", 3, self.stride)(out)
        out = nn.relu(bn("bn2")(out, train))
        out = conv("conv2", 3, 1, joint=self.stream, si=self.stream_si)(out)
        return out + sc


class ResNet18SI(nn.Module):
    """Pre-activation ResNet-18 of width ``k``; ``si_extras``: the official SI version.

    ``conv3x3(3 -> k)`` stem (no BN), four stages of two :class:`PreActBlock`
    with ``k, 2k, 4k, 8k`` channels and strides ``1, 2, 2, 2``, then (with
    ``si_extras``) ``BN -> ReLU``, average pooling 4, flatten and a linear head.
    Convolutions use PyTorch's padding ``(K-1)//2`` and have no bias.  Input is
    ``[B, 32, 32, C]`` (smaller inputs: the pooling window shrinks to the last
    feature map).  See the module docstring for the SI sets.

    The three models of the paper (official class names):

    - ``ResNet18SI``: this with defaults.  BN affine off, frozen head without
      bias, weight rescaled to norm ``init_scale``; every trainable parameter SI.
    - ``ResNet18SIAf``: ``affine=True, train_last_layer=True, init_scale=0``.
      Every BN, the shortcut and final ones included, has a scale (init 1) and
      bias (init 0); the head (still without bias) is trainable at PyTorch's init.
    - ``ResNet18`` (conventional, width 64): ``si_extras=False, affine=True,
      train_last_layer=True, init_scale=0, width=64``.  No BN before the shortcut
      convolution, no final BN/ReLU (layer4 goes straight to the pooling), head
      with bias.

    Attributes:
      width: ``k``, channels of the stem and the first stage (64: standard).
      num_classes: number of outputs.
      init_scale: Frobenius norm of the head weight; ``<= 0`` keeps PyTorch's init.
      affine: BatchNorms with trainable scale and bias.
      train_last_layer: trainable (non-SI) head instead of frozen.
      si_extras: the official SI additions: a BN before each shortcut
        convolution and a final BN -> ReLU, and a head without bias.  False: the
        conventional pre-activation ResNet-18 (head with bias).
      bn_si: with ``affine``, declare the ``bn1`` scale and bias of the blocks
        without a shortcut convolution SI (jointly per BN; see the module
        docstring).
      bn_momentum: BatchNorm running-statistics momentum (PyTorch convention).
      fast_vjp: convolutions with the loop-friendly VJP (see
        :func:`~three_regimes_jax.engine.models.layers.conv_fast_vjp`); set False
        for forward-mode autodiff (``jax.jvp``), as the sharpness measures do.
      uses_conv: True: the grid strategy ``auto`` runs conv models member by member
        on CPU (see ``engine.grid.choose_strategy``).
    """

    uses_conv: ClassVar[bool] = True
    width: int = 32
    num_classes: int = 10
    init_scale: float = 10.0
    affine: bool = False
    train_last_layer: bool = False
    si_extras: bool = True
    bn_si: bool = False
    bn_momentum: float = 0.1
    fast_vjp: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        k = self.width
        x = SIConv(k, 3, 1, fast_vjp=self.fast_vjp, joint="stream1", name="conv1")(x)
        for stage in range(STAGES):
            # Without the final BN the last stream reaches the head unnormalised.
            last_unnormalised = stage == STAGES - 1 and not self.si_extras
            for b in range(BLOCKS_PER_STAGE):
                stride = 2 if stage > 0 and b == 0 else 1
                x = PreActBlock(
                    k * 2**stage,
                    stride,
                    stream=f"stream{stage + 1}",
                    stream_si=not last_unnormalised,
                    bn1_si=self.bn_si and (stage == 0 or b > 0),
                    affine=self.affine,
                    si_extras=self.si_extras,
                    bn_momentum=self.bn_momentum,
                    fast_vjp=self.fast_vjp,
                    name=f"layer{stage + 1}_{b}",
                )(x, train)
        if self.si_extras:
            x = nn.relu(BatchNorm(self.bn_momentum, affine=self.affine, name="bn")(x, train))
        pool = min(4, x.shape[1], x.shape[2])
        x = nn.avg_pool(x, (pool, pool), strides=(pool, pool))
        x = x.reshape((x.shape[0], -1))
        head = FrozenDense(
            self.num_classes,
            self.init_scale,
            self.train_last_layer,
            use_bias=not self.si_extras,
            name="linear",
        )
        return head(x)
