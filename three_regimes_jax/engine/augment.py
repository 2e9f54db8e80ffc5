"""On-device data augmentation: the standard CIFAR random crop and horizontal flip.

:func:`random_crop_flip` is a pure jittable function of a PRNG key and a
batch, applied inside the jitted epoch to each training mini-batch (App. C:
"random crop (size: 32, padding: 4) and random horizontal flip").  As
torchvision's ``RandomCrop(32, padding=4)`` on the raw image, the padding is
black: after normalisation that is ``-mean / std`` per channel, which the
caller passes as ``pad_value``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

#: Folded into a member's data key to draw its augmentations.
AUGMENT_SALT = 0x415547


def random_crop_flip(
    key: jax.Array, x: jax.Array, pad_value: jax.Array, padding: int = 4
) -> jax.Array:
    """Random ``H x W`` crops of the padded images, then random horizontal flips.

    Args:
      key: PRNG key; the same key gives the same crops and flips.
      x: images ``[B, H, W, C]`` (already normalised).
      pad_value: ``[C]`` (or scalar): the value of the padding, per channel.
      padding: pixels added on every side before cropping.

    Returns:
      Augmented images of the shape of ``x``: each is the crop at offsets
      ``(dy, dx)`` drawn uniformly from ``[0, 2 * padding]``, flipped left-right
      with probability 1/2 (as torchvision's ``RandomCrop`` + ``RandomHorizontalFlip``).
    """
    b, h, w, c = x.shape
    k_y, k_x, k_f = jax.random.split(key, 3)
    fill = jnp.broadcast_to(jnp.asarray(pad_value, x.dtype), (c,))
    padded = jnp.broadcast_to(fill, (b, h + 2 * padding, w + 2 * padding, c))
    padded = jax.lax.dynamic_update_slice(padded, x, (0, padding, padding, 0))
    dy = jax.random.randint(k_y, (b,), 0, 2 * padding + 1)
    dx = jax.random.randint(k_x, (b,), 0, 2 * padding + 1)

    def crop(img, oy, ox):
        return jax.lax.dynamic_slice(img, (oy, ox, 0), (h, w, c))

    out = jax.vmap(crop)(padded, dy, dx)
    flip = jax.random.bernoulli(k_f, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], out[:, :, ::-1, :], out)


def augment_key(data_key: jax.Array, step: jax.Array) -> jax.Array:
    """The augmentation key of a member's optimizer step (members sharing a seed share it)."""
    base = jax.random.fold_in(jax.random.wrap_key_data(data_key), AUGMENT_SALT)
    return jax.random.fold_in(base, step)
