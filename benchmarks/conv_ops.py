"""Where a ConvNetSI-8 step spends its time on XLA:CPU: each convolution timed on its own.

For each of the four 3x3 convolutions of ConvNetSI-8 (batch 128) this times, each
jitted alone (no loop), the forward convolution, the input gradient and the kernel
gradient in the forms ``conv_same_fast_vjp`` uses (canonical NHWC x HWIO), plus the
kernel gradient as im2col patches + one matmul (an alternative formulation).

Usage::

    .venv/bin/python benchmarks/conv_ops.py            # ~30 s
    .venv/bin/python benchmarks/conv_ops.py --write    # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from common import (
    BATCH,
    CONV_WIDTH,
    SGEMM_PEAK_GFLOPS,
    cpu_model,
    git_revision,
    load_average,
    markdown_table,
    median_and_min,
    time_calls,
    write_section,
)

DN = ("NHWC", "HWIO", "NHWC")
PAD = ((1, 1), (1, 1))


def conv(x, k):
    """Stride-1 'SAME' 3x3 convolution, NHWC x HWIO."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), PAD, dimension_numbers=DN)


def input_grad(dy, k):
    """dx: dy correlated with the spatially reversed kernel, I/O swapped."""
    return conv(dy, jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)))


def kernel_grad(x, dy):
    """dk as a canonical convolution with batch and feature roles exchanged."""
    dk = conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)))
    return jnp.transpose(dk, (1, 2, 0, 3))


def kernel_grad_im2col(x, dy):
    """dk as 3x3 patches of x (``[N,H,W,9*Ci]``) contracted with dy over N, H, W."""
    patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), PAD, dimension_numbers=DN)
    return jnp.einsum("nhwp,nhwo->po", patches, dy)


def timed_ms(f, *args, repeats: int = 7) -> float:
    """Median ms of a jitted ``f(*args)`` after 2 warm-up calls."""
    g = jax.jit(f)
    times = time_calls(lambda: jax.block_until_ready(g(*args)), repeats=repeats, warmup=2)
    return 1e3 * median_and_min(times)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = p.parse_args(argv)
    w = CONV_WIDTH
    layers = [(32, 3, w), (32, w, 2 * w), (16, 2 * w, 4 * w), (8, 4 * w, 8 * w)]
    rows, totals = [], [0.0, 0.0, 0.0]
    for i, (hw, ci, co) in enumerate(layers):
        keys = jax.random.split(jax.random.key(i), 3)
        x = jax.random.normal(keys[0], (BATCH, hw, hw, ci))
        k = jax.random.normal(keys[1], (3, 3, ci, co))
        dy = jax.random.normal(keys[2], (BATCH, hw, hw, co))
        gflop = 2 * BATCH * hw * hw * 9 * ci * co / 1e9
        fwd, dx, dk = (
            timed_ms(conv, x, k),
            timed_ms(input_grad, dy, k),
            timed_ms(kernel_grad, x, dy),
        )
        dk2 = timed_ms(kernel_grad_im2col, x, dy)
        totals[0] += fwd
        totals[1] += dx if i else 0.0  # the first layer needs no input gradient
        totals[2] += dk

        def cell(ms, gflop=gflop):
            return f"{ms:.1f} ({gflop / ms * 1e3:.0f})"

        rows.append(
            [f"{hw}x{hw}, {ci}->{co}", f"{gflop:.2f}", cell(fwd), cell(dx), cell(dk), cell(dk2)]
        )
        print(" | ".join(rows[-1]), flush=True)
    rows.append(["sum (no dx for layer 1)", "", f"{totals[0]:.1f}", f"{totals[1]:.1f}"])
    rows[-1] += [f"{totals[2]:.1f}", ""]
    header = ["layer (HxW, Ci->Co)", "GFLOP each", "forward ms (GFLOP/s)", "input grad"]
    header += ["kernel grad (conv)", "kernel grad (im2col + matmul)"]
    text = "\n".join(
        [
            f"Command: `.venv/bin/python benchmarks/conv_ops.py` (commit {git_revision()}; "
            f"{cpu_model()}, jax {jax.__version__}; batch {BATCH}; each op jitted alone, median "
            f"of 7 calls after 2 warm-ups; peak reference {SGEMM_PEAK_GFLOPS:.0f} GFLOP/s; "
            f"load average after: {load_average()}).",
            "",
            markdown_table(header, rows),
        ]
    )
    print()
    print(text)
    if args.write:
        write_section("conv_ops", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
