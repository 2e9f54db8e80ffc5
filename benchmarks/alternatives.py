"""Formulations tried for the slow parts of a grid step, each timed inside ``lax.scan``.

Every variant runs as the trainer runs it: jitted, inside a ``lax.scan`` of a few
iterations (XLA:CPU compiles loop bodies differently from entry computations), on
ConvNetSI-8 / MLP-SI shapes at batch 128; the time is the best of 5 calls divided
by the iterations.  Each variant's result is checked against the reference.

- ``kernel-grad``: the four 3x3 kernel gradients of ConvNetSI-8: the canonical
  convolution the library uses (``conv``), 9 tap matmuls over shifted slices
  (``taps``), im2col by slices + one matmul (``im2col``), three row-shifted
  copies + 3 matmuls (``rows``), and the convolution with ``dy`` as input and
  ``x`` as kernel (``swap``).
- ``pool``: 2x2 max pooling, forward + backward: ``nn.max_pool`` against the
  reshaped max the library uses.
- ``batchnorm``: affine-free BatchNorm + ReLU, forward + backward: autodiff of
  the library's formula against a hand-written VJP.
- ``reductions``: the three per-leaf sums of the sphere step on ``[8, 784, 300]``
  (with one elementwise pass): full sums, and row sums stacked then summed.

Usage::

    .venv/bin/python benchmarks/alternatives.py [kernel-grad|pool|batchnorm|reductions ...]
"""

from __future__ import annotations

import sys
import time

import jax
import jax.numpy as jnp
from flax import linen as nn

DN = ("NHWC", "HWIO", "NHWC")
PAD = ((1, 1), (1, 1))
EPS = 1e-5


def in_scan_ms(f, *args, length: int = 8) -> float:
    """Best-of-5 ms per iteration of ``f(*args)`` (its output summed into a carry) in lax.scan."""

    def run(*args):
        def body(c, _):
            out = f(*jax.tree.map(lambda a: a + 1e-9 * c, args))
            return c + 1e-9 * sum(jnp.sum(o) for o in jax.tree.leaves(out)), None

        return jax.lax.scan(body, jnp.zeros(()), None, length=length)[0]

    fn = jax.jit(run)
    fn(*args).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        fn(*args).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times) / length


def conv(x, k):
    """Stride-1 'SAME' 3x3 convolution, NHWC x HWIO."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), PAD, dimension_numbers=DN)


def kg_conv(x, dy):
    """The library's kernel gradient: a canonical convolution, batch and features swapped."""
    return jnp.transpose(
        conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3))), (1, 2, 0, 3)
    )


def _shifted(x):
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [[xp[:, i : i + h, j : j + w] for j in range(3)] for i in range(3)]


def kg_taps(x, dy):
    """Nine matmuls, one per tap, over shifted slices of x."""
    s = _shifted(x)
    return jnp.stack(
        [jnp.stack([jnp.einsum("nhwc,nhwo->co", s[i][j], dy) for j in range(3)]) for i in range(3)]
    )


def kg_im2col(x, dy):
    """Patches by concatenating the nine slices, then one matmul."""
    s = _shifted(x)
    patches = jnp.concatenate([s[i][j] for i in range(3) for j in range(3)], axis=-1)
    return jnp.einsum("nhwp,nhwo->po", patches, dy).reshape(3, 3, x.shape[-1], -1)


def kg_rows(x, dy):
    """Three horizontally shifted copies in the channels, one matmul per kernel row."""
    n, h, w, c = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x3 = jnp.concatenate([xp[:, :, j : j + w] for j in range(3)], axis=-1)
    out = jnp.stack([jnp.einsum("nhwp,nhwo->po", x3[:, i : i + h], dy) for i in range(3)])
    return out.reshape(3, 3, c, -1)


def kg_swap(x, dy):
    """The convolution with dy as input and x as kernel, flipped back."""
    out = conv(jnp.transpose(dy, (3, 1, 2, 0)), jnp.transpose(x, (1, 2, 0, 3)))
    return jnp.transpose(out[:, ::-1, ::-1, :], (1, 2, 3, 0))


def kernel_grad() -> None:
    variants = {"conv": kg_conv, "taps": kg_taps, "im2col": kg_im2col, "rows": kg_rows}
    variants["swap"] = kg_swap
    print("| layer (HxW, Ci->Co) | " + " | ".join(f"{v} ms" for v in variants) + " |")
    print("|---" * (len(variants) + 1) + "|")
    for hw, ci, co in ((32, 3, 8), (32, 8, 16), (16, 16, 32), (8, 32, 64)):
        x = jax.random.normal(jax.random.key(0), (128, hw, hw, ci))
        dy = jax.random.normal(jax.random.key(1), (128, hw, hw, co))
        ref = jax.jit(kg_conv)(x, dy)
        cells = []
        for f in variants.values():
            err = float(jnp.max(jnp.abs(jax.jit(f)(x, dy) - ref)) / jnp.max(jnp.abs(ref)))
            assert err < 1e-4, err
            cells.append(f"{in_scan_ms(f, x, dy):.2f}")
        print(f"| {hw}x{hw}, {ci}->{co} | " + " | ".join(cells) + " |")


def pool() -> None:
    z = jax.random.normal(jax.random.key(0), (128, 32, 32, 16))
    dy = jax.random.normal(jax.random.key(1), (128, 16, 16, 16))

    def reshaped(x):
        return jnp.max(x.reshape(128, 16, 2, 16, 2, 16), axis=(2, 4))

    for name, p in (
        ("nn.max_pool", lambda x: nn.max_pool(x, (2, 2), (2, 2))),
        ("reshape", reshaped),
    ):
        grad = jax.grad(lambda z, p=p: jnp.sum(p(jax.nn.relu(z)) * dy))
        print(f"| {name} | {in_scan_ms(grad, z, length=16):.2f} ms (forward + backward) |")


def _bn(x):
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + EPS)


@jax.custom_vjp
def _bn_custom(x):
    return _bn(x)


def _bn_fwd(x):
    return _bn(x), x


def _bn_bwd(x, dy):
    n = x.size // x.shape[-1]
    mean = jnp.mean(x, axis=(0, 1, 2))
    r = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=(0, 1, 2)) + EPS)
    xhat = (x - mean) * r
    s1, s2 = jnp.sum(dy, axis=(0, 1, 2)), jnp.sum(dy * xhat, axis=(0, 1, 2))
    return (r * (dy - s1 / n - xhat * (s2 / n)),)


_bn_custom.defvjp(_bn_fwd, _bn_bwd)


def batchnorm() -> None:
    z = jax.random.normal(jax.random.key(0), (128, 32, 32, 16))
    dy = jax.random.normal(jax.random.key(1), z.shape)
    grads = {}
    for name, f in (("autodiff", _bn), ("custom VJP", _bn_custom)):
        grads[name] = jax.grad(lambda z, f=f: jnp.sum(jax.nn.relu(f(z)) * dy))
        print(f"| {name} | {in_scan_ms(grads[name], z, length=16):.2f} ms (forward + backward) |")
    a, b = (jax.jit(g)(z) for g in grads.values())
    print(f"max relative difference: {float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a))):.1e}")


def reductions() -> None:
    p = jax.random.normal(jax.random.key(0), (8, 784, 300))
    g = jax.random.normal(jax.random.key(1), (8, 784, 300))

    def full(p, g):
        return jnp.stack([jnp.sum(p * p), jnp.sum(g * g), jnp.sum(p * g)])

    def rows(p, g):
        r = [jnp.sum(p * p, -1), jnp.sum(g * g, -1), jnp.sum(p * g, -1)]
        return jnp.sum(jnp.stack(r), -1)

    for name, f in (("three full sums", full), ("row sums, stacked", rows)):

        def step(p, g, f=f):
            s = jax.vmap(f)(p, g)
            return p * (1 + 1e-9 * s[:, :1, None])  # one elementwise pass, as the update

        print(f"| {name} | {in_scan_ms(step, p, g, length=32):.3f} ms per G = 8 step |")


def main(argv: list[str]) -> int:
    parts = {"kernel-grad": kernel_grad, "pool": pool, "batchnorm": batchnorm}
    parts["reductions"] = reductions
    for name in argv or list(parts):
        print(f"\n## {name} ({jax.devices()[0].device_kind}, jax {jax.__version__})\n")
        parts[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
