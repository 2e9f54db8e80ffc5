"""Why ConvNetSI is slow inside ``train_epoch`` on XLA:CPU, and a prototype fix.

XLA:CPU runs a convolution with its fast (Eigen) kernel only in the canonical
layout (input NHWC, kernel HWIO).  The pass that rewrites other convolutions into
that layout, ``ConvCanonicalization``, walks the *entry computation only*, so the
backward convolutions that JAX's autodiff emits (input gradient with a reversed
``01oi`` kernel, weight gradient ``f01b_i01o->01bf``) stay non-canonical when they
sit inside a ``while`` loop (``lax.scan``, ``lax.map``) and fall back to XLA's
generic loop-nest convolution (see jax-ml/jax#12868).

This script measures one ConvNetSI-8 training step (batch 128) of the library
(a) jitted alone, (b) inside ``lax.scan``, (c) inside a fully unrolled scan, and
the same with a prototype ``SIConv`` whose custom VJP writes both backward
convolutions in canonical layout with explicit transposes (d, e), and then the
prototype inside ``GridTrainer.train_epoch`` with ``vmap`` and ``map``.  It also
counts canonical vs non-canonical convolutions in the compiled HLO.  The library
is not modified: the prototype is patched into ``three_regimes_jax.models.convnet``
for the duration of a ``with`` block.

Usage::

    .venv/bin/python benchmarks/conv_in_loop.py            # ~1.5 min
    .venv/bin/python benchmarks/conv_in_loop.py --flags    # + XLA_FLAGS variants (~2 min more)
    .venv/bin/python benchmarks/conv_in_loop.py --write    # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    BATCH,
    CONV_WIDTH,
    SGEMM_PEAK_GFLOPS,
    cpu_model,
    load_average,
    markdown_table,
    median_and_min,
    time_calls,
    wait_for_quiet,
    write_section,
    xla_flops,
)
from flax import linen as nn

import three_regimes_jax.models.convnet as convnet_module
from three_regimes_jax.grid import member
from three_regimes_jax.models import layers
from three_regimes_jax.sphere import scale_invariant
from three_regimes_jax.sweep import SweepConfig, make_trainer

INPUT_SHAPE = (32, 32, 3)
STEPS = 2  # batches per scan; >= 2, else XLA removes the one-trip loop
CANONICAL = "b01f_01io->b01f"
PAD = ((1, 1), (1, 1))


# --------------------------------------------------------------------------- the prototype


def _conv_nhwc(x: jax.Array, k: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), PAD, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def conv3x3_canonical(x: jax.Array, k: jax.Array) -> jax.Array:
    """3x3 'SAME' convolution, NHWC x HWIO; its VJP uses only canonical convolutions."""
    return _conv_nhwc(x, k)


def _fwd(x, k):
    return _conv_nhwc(x, k), (x, k)


def _bwd(res, dy):
    x, k = res
    # Input gradient: correlate dy with the spatially reversed kernel, I and O swapped.
    dx = _conv_nhwc(dy, jnp.transpose(k[::-1, ::-1], (0, 1, 3, 2)))
    # Weight gradient: a convolution with batch <-> feature roles exchanged,
    # written in NHWC/HWIO by explicit transposes: [Ci,H,W,N] * [H,W,N,Co] -> [Ci,3,3,Co].
    dk = _conv_nhwc(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)))
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


conv3x3_canonical.defvjp(_fwd, _bwd)


class SIConv(layers.SIConv):
    """Drop-in ``SIConv`` (same name, parameters and init) using :func:`conv3x3_canonical`."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        assert k == 3, "prototype handles 3x3 only"
        fan_in = x.shape[-1] * k * k
        kernel = self.param(
            "kernel",
            scale_invariant(layers.torch_uniform(fan_in)),
            (k, k, x.shape[-1], self.features),
        )
        return conv3x3_canonical(x, kernel)


@contextlib.contextmanager
def patched_siconv(enabled: bool):
    """Temporarily makes ConvNetSI build its convolutions with the prototype ``SIConv``."""
    original = convnet_module.SIConv
    if enabled:
        convnet_module.SIConv = SIConv
    try:
        yield
    finally:
        convnet_module.SIConv = original


# --------------------------------------------------------------------------- measurements


def conv_census(compiled) -> tuple[int, int]:
    """(convolutions, non-canonical convolutions) in a compiled executable's HLO."""
    labels = re.findall(r"convolution\([^\n]*?dim_labels=(\S+?),", compiled.as_text())
    return len(labels), sum(lab != CANONICAL for lab in labels)


def setup(canonical: bool, strategy: str = "map", g: int = 1):
    """Trainer, grid state and data (STEPS batches) for ConvNetSI-8."""
    cfg = SweepConfig(
        model="convnet_si",
        width=CONV_WIDTH,
        batch_size=BATCH,
        elrs=tuple(float(e) for e in np.logspace(-4, -1, g)),
        strategy=strategy,
        drop_last=True,
    )
    with patched_siconv(canonical):
        trainer = make_trainer(cfg, 10, INPUT_SHAPE)
        state = trainer.init(cfg.member_elrs, cfg.member_seeds, INPUT_SHAPE)
    kx, ky = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (STEPS, BATCH, *INPUT_SHAPE))
    ys = jax.random.randint(ky, (STEPS, BATCH), 0, 10)
    return trainer, state, xs, ys


def measure_step(canonical: bool, how: str, repeats: int) -> dict:
    """ms per step of one member's train step: ``how`` in {"alone", "scan", "unrolled"}."""
    trainer, state, xs, ys = setup(canonical)
    ms = member(state, 0)

    def scan(ms, xs, ys):
        def body(ms, batch):
            ms, m = trainer._train_step(ms, *batch)
            return ms, m["batch_loss"]

        return jax.lax.scan(body, ms, (xs, ys), unroll=how == "unrolled")

    with patched_siconv(canonical):
        t0 = time.perf_counter()
        if how == "alone":
            compiled = jax.jit(trainer._train_step).lower(ms, xs[0], ys[0]).compile()
        else:
            compiled = jax.jit(scan).lower(ms, xs, ys).compile()
        compile_s = time.perf_counter() - t0
    n_conv, n_bad = conv_census(compiled)
    steps = 1 if how == "alone" else STEPS
    box = [ms]

    def run():
        if how == "alone":
            box[0], out = compiled(box[0], xs[0], ys[0])
        else:
            box[0], out = compiled(box[0], xs, ys)
        jax.block_until_ready((box[0], out))

    times = time_calls(run, repeats=repeats, warmup=1)
    med, best = median_and_min(times)
    flops = xla_flops(compiled) if how == "alone" else float("nan")
    return dict(
        ms=1e3 * med / steps,
        ms_min=1e3 * best / steps,
        compile_s=compile_s,
        convs=f"{n_bad}/{n_conv}",
        flops=flops,
        params=box[0].params,
    )


def measure_grid(canonical: bool, strategy: str, g: int, repeats: int) -> dict:
    """ms per model-step of ``train_epoch`` (STEPS batches) for a grid of ``g`` members."""
    trainer, state, xs, ys = setup(canonical, strategy, g)
    x, y = xs.reshape(-1, *INPUT_SHAPE), ys.reshape(-1)
    with patched_siconv(canonical):
        t0 = time.perf_counter()
        compiled = trainer._train_epoch.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
        compile_s = time.perf_counter() - t0
    n_conv, n_bad = conv_census(compiled)
    box = [state]

    def run():
        box[0], m = compiled(box[0], x, y, jnp.asarray(0, jnp.uint32))
        jax.block_until_ready((box[0], m))

    times = time_calls(run, repeats=repeats, warmup=1)
    med, best = median_and_min(times)
    per = g * STEPS
    return dict(
        ms=1e3 * med / per, ms_min=1e3 * best / per, compile_s=compile_s, convs=f"{n_bad}/{n_conv}"
    )


FLAG_VARIANTS = (
    "",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_xnnpack=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_enable_fast_math=true",
)


def flags_child() -> None:
    """Child process of ``--flags``: prints 'alone' and 'scan' ms/step of the library step."""
    a = measure_step(False, "alone", repeats=3)
    s = measure_step(False, "scan", repeats=2)
    print(f"RESULT {a['ms']:.1f} {s['ms']:.1f} {s['convs']}", flush=True)


def flag_rows() -> list[list[str]]:
    """Library step alone / in scan under each XLA_FLAGS variant (one subprocess each)."""
    rows = []
    for flags in FLAG_VARIANTS:
        env = dict(os.environ, XLA_FLAGS=flags)
        proc = subprocess.run(
            [sys.executable, __file__, "--flags-child"], env=env, capture_output=True, text=True
        )
        m = re.search(r"^RESULT (\S+) (\S+) (\S+)$", proc.stdout, re.M)
        warn = "no longer supported" in proc.stderr
        note = "flag ignored: 'no longer supported'" if warn else ""
        if m is None:
            note = (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]
            rows.append([f"`{flags}`" if flags else "(none)", "-", "-", "-", note])
        else:
            rows.append([f"`{flags}`" if flags else "(none)", *m.groups(), note])
        print(" | ".join(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flags", action="store_true", help="also try XLA_FLAGS variants")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to S seconds for idle CPUs first"
    )
    p.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    p.add_argument("--flags-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.flags_child:
        flags_child()
        return 0
    cmd = "benchmarks/conv_in_loop.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    cmd = re.sub(r" --write| --wait-quiet[ =]\S+", "", cmd)
    busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else float("nan")
    busy_str = "not checked" if busy != busy else f"{100 * busy:.0f}%"
    t_start = time.perf_counter()
    print(f"# {cpu_model()}, jax {jax.__version__}, load average {load_average()}", flush=True)

    rows, results = [], {}
    header = ["variant", "conv VJP", "ms/step (median)", "ms (min)", "GFLOP/s", "% of 380"]
    header += ["compile s", "non-canonical/all convs in HLO"]
    flops = None
    for canonical in (False, True):
        for how, reps in (("alone", 5), ("scan", 2), ("unrolled", 2)):
            if canonical and how == "unrolled":
                continue
            r = measure_step(canonical, how, reps)
            results[canonical, how] = r
            flops = r["flops"] if how == "alone" and not canonical else flops
            gfs = flops / (r["ms"] * 1e-3) / 1e9
            where = {
                "alone": "one jitted step, no loop",
                "scan": f"lax.scan over {STEPS} steps",
                "unrolled": f"lax.scan over {STEPS} steps, unroll=True",
            }[how]
            rows.append(
                [
                    where,
                    "prototype (canonical)" if canonical else "library (JAX autodiff)",
                    f"{r['ms']:.0f}",
                    f"{r['ms_min']:.0f}",
                    f"{gfs:.1f}",
                    f"{100 * gfs / SGEMM_PEAK_GFLOPS:.1f}",
                    f"{r['compile_s']:.1f}",
                    r["convs"],
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(results[False, "scan"]["params"]),
            jax.tree.leaves(results[True, "scan"]["params"]),
            strict=True,
        )
    )
    print(f"max |params(library) - params(prototype)| after the scans: {diff:.2e}")

    grid_rows = []
    for g in (1, 2, 4):
        for strategy in ("map", "vmap"):
            r = measure_grid(True, strategy, g, repeats=2)
            gfs = flops / (r["ms"] * 1e-3) / 1e9
            grid_rows.append(
                [
                    strategy,
                    g,
                    f"{r['ms']:.0f}",
                    f"{r['ms_min']:.0f}",
                    f"{gfs:.1f}",
                    f"{100 * gfs / SGEMM_PEAK_GFLOPS:.1f}",
                    f"{r['compile_s']:.1f}",
                    r["convs"],
                ]
            )
            print(" | ".join(str(c) for c in grid_rows[-1]), flush=True)
    grid_header = ["strategy", "G", "ms/model-step (median)", "ms (min)", "GFLOP/s", "% of 380"]
    grid_header += ["compile s", "non-canonical/all convs in HLO"]

    parts = [
        f"Command: `.venv/bin/python {cmd}` ({cpu_model()}, jax {jax.__version__}; "
        f"ConvNetSI-{CONV_WIDTH}, batch {BATCH}; {flops / 1e9:.2f} GFLOP/step from XLA cost "
        f"analysis; CPUs busy before start: {busy_str}; "
        f"load average after: {load_average()}).",
        "",
        "One member's train step:",
        "",
        markdown_table(header, rows),
        "",
        f"max |params(library) - params(prototype)| after {STEPS} scanned steps: {diff:.1e}",
        "",
        f"Prototype conv inside `GridTrainer.train_epoch` ({STEPS} steps/epoch, "
        "median of 2 epochs after 1 warm-up):",
        "",
        markdown_table(grid_header, grid_rows),
    ]
    if args.flags:
        flag_header = ["XLA_FLAGS", "step alone ms", "step in scan ms", "non-canon/all", "note"]
        parts += ["", "Library step under XLA_FLAGS variants (one subprocess each):", ""]
        parts.append(markdown_table(flag_header, flag_rows()))
    parts.append(f"\nTotal {time.perf_counter() - t_start:.0f} s.")
    text = "\n".join(parts)
    print()
    print(text)
    if args.write:
        write_section("conv_in_loop_flags" if args.flags else "conv_in_loop", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
