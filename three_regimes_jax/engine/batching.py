"""The one mini-batch loop of the engine: training, evaluation, BN recompute and sharpness.

:func:`scan_batches` folds a function over the mini-batches of ``(x, y)``
inside one ``lax.scan`` (so it compiles once, whatever the dataset size), then
applies it once more to the last partial batch unless ``drop_last``, as
PyTorch's ``DataLoader`` does.  Batches are taken in order, or in the order of
an index permutation (training).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def scan_batches(
    fn: Callable[[Any, jax.Array, jax.Array], Any],
    carry: Any,
    x: jax.Array,
    y: jax.Array,
    batch_size: int,
    *,
    order: jax.Array | None = None,
    drop_last: bool = False,
    collect: bool = False,
) -> tuple[Any, int]:
    """Folds ``carry = fn(carry, xb, yb)`` over the mini-batches of ``(x, y)``.

    With ``collect``, ``fn`` returns ``(carry, out)`` and the result is
    ``((carry, outs), n_batches)`` with ``outs`` stacked over the batches
    (leading axis ``n_batches``).

    Args:
      fn: the per-batch update; it sees full batches of ``batch_size`` and, at
        the end, the partial batch (a different static shape).
      carry: the initial carry (any pytree).
      x: inputs ``[n, ...]``.
      y: labels ``[n]``.
      batch_size: the mini-batch size (static); clipped to ``n``.
      order: an index permutation ``[n]`` to take the examples in (default: in order).
      drop_last: skip the last partial batch.
      collect: ``fn`` returns ``(carry, out)``; stack the outs (see above).

    Returns:
      The final carry and the number of batches seen (a Python int).
    """
    n = x.shape[0]
    bs = min(int(batch_size), n)
    n_full = n // bs

    def split(result):
        return result if collect else (result, None)

    if order is None:

        def body(c, i):
            xb = jax.lax.dynamic_slice_in_dim(x, i * bs, bs)
            yb = jax.lax.dynamic_slice_in_dim(y, i * bs, bs)
            return split(fn(c, xb, yb))

        carry, outs = jax.lax.scan(body, carry, jnp.arange(n_full))
        rest = slice(n_full * bs, n)
        x_rest, y_rest = x[rest], y[rest]
    else:

        def body(c, idx):
            return split(fn(c, x[idx], y[idx]))

        carry, outs = jax.lax.scan(body, carry, order[: n_full * bs].reshape(n_full, bs))
        idx = order[n_full * bs :]
        x_rest, y_rest = x[idx], y[idx]
    if n % bs and not drop_last:
        carry, out = split(fn(carry, x_rest, y_rest))
        if collect:
            outs = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), outs, out)
        return ((carry, outs) if collect else carry), n_full + 1
    return ((carry, outs) if collect else carry), n_full


def batch_mean(
    fn: Callable[[jax.Array, jax.Array], Any],
    x: jax.Array,
    y: jax.Array,
    batch_size: int,
    *,
    order: jax.Array | None = None,
    drop_last: bool = False,
) -> Any:
    """Mean over mini-batches of ``fn(xb, yb)`` (a pytree), via :func:`scan_batches`."""
    bs = min(int(batch_size), x.shape[0])
    shapes = jax.eval_shape(fn, x[:bs], y[:bs])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def add(acc, xb, yb):
        return jax.tree.map(jnp.add, acc, fn(xb, yb))

    total, count = scan_batches(add, zeros, x, y, bs, order=order, drop_last=drop_last)
    return jax.tree.map(lambda t: t / count, total)
