"""Why ConvNetSI was slow inside ``train_epoch`` on XLA:CPU, and what the fast VJP changes.

XLA:CPU runs a convolution with its fast (Eigen) kernel only in the canonical
layout (input NHWC, kernel HWIO).  The pass that rewrites other convolutions into
that layout, ``ConvCanonicalization``, walks the *entry computation only*, so the
backward convolutions that JAX's autodiff emits (input gradient with a reversed
``01oi`` kernel, weight gradient ``f01b_i01o->01bf``) stay non-canonical when they
sit inside a ``while`` loop (``lax.scan``, ``lax.map``) and fall back to XLA's
generic loop-nest convolution (see jax-ml/jax#12868).

``models.layers.conv_same_fast_vjp`` (``SIConv(fast_vjp=True)``, the default)
writes both backward convolutions in the canonical layout with explicit
transposes.  This script measures one ConvNetSI-8 training step (batch 128) with
JAX's own conv VJP (``fast_vjp=False``) and with the fast VJP: (a) jitted alone,
(b) inside ``lax.scan``, (c) inside a fully unrolled scan (autodiff only); then
the fast VJP inside ``GridTrainer.train_epoch`` with ``map`` and ``vmap``.  It
counts the non-canonical and the grouped convolutions in each compiled HLO, and
with ``--flags`` retries the autodiff step under several ``XLA_FLAGS``.

Usage::

    .venv/bin/python benchmarks/conv_in_loop.py            # ~1.2 min
    .venv/bin/python benchmarks/conv_in_loop.py --flags    # + XLA_FLAGS variants (~3 min in all)
    .venv/bin/python benchmarks/conv_in_loop.py --write    # also update RESULTS.md
"""

from __future__ import annotations

import argparse
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
    git_revision,
    load_average,
    markdown_table,
    median_and_min,
    time_calls,
    wait_for_quiet,
    write_section,
    xla_flops,
)

from three_regimes_jax.config import Config
from three_regimes_jax.engine.grid import member
from three_regimes_jax.engine.train import make_train_step
from three_regimes_jax.engine.trainer import GridTrainer
from three_regimes_jax.studies.run import make_trainer

INPUT_SHAPE = (32, 32, 3)
STEPS = 2  # batches per scan; >= 2, else XLA removes the one-trip loop
CANONICAL = "b01f_01io->b01f"
VJP_LABEL = {False: "JAX autodiff (`fast_vjp=False`)", True: "`conv_same_fast_vjp` (default)"}


def conv_census(compiled) -> str:
    """'non-canonical / grouped / all' convolutions in a compiled executable's HLO."""
    convs = re.findall(r"convolution\([^\n]*", compiled.as_text())
    bad = sum(f"dim_labels={CANONICAL}," not in c for c in convs)
    grouped = sum(bool(re.search(r"(feature|batch)_group_count=", c)) for c in convs)
    return f"{bad} / {grouped} / {len(convs)}"


def setup(fast_vjp: bool, strategy: str = "map", g: int = 1):
    """Trainer (ConvNetSI-8 with or without the fast conv VJP), grid state and STEPS batches."""
    cfg = Config.from_flat(
        model="convnet_si",
        width=CONV_WIDTH,
        batch_size=BATCH,
        elrs=tuple(float(e) for e in np.logspace(-4, -1, g)),
        strategy=strategy,
        drop_last=True,
    )
    trainer = make_trainer(cfg, 10, INPUT_SHAPE)
    # The trainer's functions are built from its model: rebuild with the VJP variant.
    trainer = GridTrainer(
        trainer.model.clone(fast_vjp=fast_vjp),
        trainer.si_mask,
        batch_size=BATCH,
        strategy=strategy,
        drop_last=True,
    )
    state = trainer.init(cfg.member_elrs, cfg.member_seeds, INPUT_SHAPE)
    kx, ky = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (STEPS, BATCH, *INPUT_SHAPE))
    ys = jax.random.randint(ky, (STEPS, BATCH), 0, 10)
    return trainer, state, xs, ys


def measure_step(fast_vjp: bool, how: str, repeats: int) -> dict:
    """ms per step of one member's train step: ``how`` in {"alone", "scan", "unrolled"}."""
    trainer, state, xs, ys = setup(fast_vjp)
    ms0 = member(state, 0)

    def scan(ms, xs, ys):
        def body(ms, batch):
            ms, m = make_train_step(trainer.model, trainer.si_mask, trainer.optimizer)(ms, *batch)
            return ms, m["batch_loss"]

        return jax.lax.scan(body, ms, (xs, ys), unroll=how == "unrolled")

    t0 = time.perf_counter()
    if how == "alone":
        compiled = (
            jax.jit(make_train_step(trainer.model, trainer.si_mask, trainer.optimizer))
            .lower(ms0, xs[0], ys[0])
            .compile()
        )
    else:
        compiled = jax.jit(scan).lower(ms0, xs, ys).compile()
    compile_s = time.perf_counter() - t0
    steps = 1 if how == "alone" else STEPS

    def call(ms):
        return compiled(ms, xs[0], ys[0]) if how == "alone" else compiled(ms, xs, ys)

    first = jax.block_until_ready(call(ms0))[0].params  # from the initial state, for comparisons
    box = [ms0]

    def run():
        box[0], out = call(box[0])
        jax.block_until_ready((box[0], out))

    times = time_calls(run, repeats=repeats, warmup=1)
    med, best = median_and_min(times)
    return dict(
        ms=1e3 * med / steps,
        ms_min=1e3 * best / steps,
        compile_s=compile_s,
        convs=conv_census(compiled),
        flops=xla_flops(compiled) if how == "alone" else float("nan"),
        first_params=first,
    )


def measure_grid(strategy: str, g: int, repeats: int) -> dict:
    """ms per model-step of ``train_epoch`` (STEPS batches, fast VJP) for ``g`` members."""
    trainer, state, xs, ys = setup(True, strategy, g)
    x, y = xs.reshape(-1, *INPUT_SHAPE), ys.reshape(-1)
    t0 = time.perf_counter()
    compiled = trainer.train_epoch_fn.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
    compile_s = time.perf_counter() - t0
    box = [state]

    def run():
        box[0], m = compiled(box[0], x, y, jnp.asarray(0, jnp.uint32))
        jax.block_until_ready((box[0], m))

    times = time_calls(run, repeats=repeats, warmup=1)
    med, best = median_and_min(times)
    per = g * STEPS
    return dict(
        ms=1e3 * med / per,
        ms_min=1e3 * best / per,
        compile_s=compile_s,
        convs=conv_census(compiled),
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
    """Child process of ``--flags``: 'alone' and 'scan' ms/step of the autodiff-VJP step."""
    a = measure_step(False, "alone", repeats=3)
    s = measure_step(False, "scan", repeats=2)
    print(f"RESULT {a['ms']:.0f} {s['ms']:.0f} {s['convs'].replace(' ', '')}", flush=True)


def flag_rows() -> list[list[str]]:
    """Autodiff-VJP step alone / in scan under each XLA_FLAGS variant (one subprocess each)."""
    rows = []
    for flags in FLAG_VARIANTS:
        env = dict(os.environ, XLA_FLAGS=flags)
        proc = subprocess.run(
            [sys.executable, __file__, "--flags-child"], env=env, capture_output=True, text=True
        )
        m = re.search(r"^RESULT (\S+) (\S+) (\S+)$", proc.stdout, re.M)
        label = f"`{flags}`" if flags else "(none)"
        if m is None:
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]
            rows.append([label, "-", "-", "-", err])
        else:
            ignored = "no longer supported" in proc.stderr
            rows.append(
                [label, *m.groups(), "flag ignored: 'no longer supported'" if ignored else ""]
            )
        print(" | ".join(rows[-1]), flush=True)
    return rows


def _fmt(r: dict, flops: float) -> list[str]:
    gfs = flops / (r["ms"] * 1e-3) / 1e9
    return [
        f"{r['ms']:.0f}",
        f"{r['ms_min']:.0f}",
        f"{gfs:.1f}",
        f"{100 * gfs / SGEMM_PEAK_GFLOPS:.1f}",
        f"{r['compile_s']:.1f}",
        r["convs"],
    ]


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

    tail = ["ms (min)", "GFLOP/s", "% of 380", "compile s", "convs: non-canonical / grouped / all"]
    header = ["where", "conv VJP", "ms/step (median)", *tail]
    where = {
        "alone": "one jitted step, no loop",
        "scan": f"`lax.scan` over {STEPS} steps",
        "unrolled": f"`lax.scan` over {STEPS} steps, `unroll=True`",
    }
    rows, results, flops = [], {}, float("nan")
    plan = [(False, "alone", 5), (False, "scan", 2), (False, "unrolled", 2)]
    plan += [(True, "alone", 5), (True, "scan", 3)]
    for fast, how, reps in plan:
        r = results[fast, how] = measure_step(fast, how, reps)
        flops = r["flops"] if (fast, how) == (False, "alone") else flops
        rows.append([where[how], VJP_LABEL[fast], *_fmt(r, flops)])
        print(" | ".join(rows[-1]), flush=True)

    def max_diff(a, b):
        return max(
            float(jnp.max(jnp.abs(u - v)))
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )

    ref = results[False, "unrolled"]["first_params"]
    scale = max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(ref))
    diffs = {
        k: max_diff(results[k]["first_params"], ref) for k in [(False, "scan"), (True, "scan")]
    }
    diff_line = (
        f"Parameters after the first {STEPS} scanned steps from the same state, max abs difference "
        f"to the unrolled autodiff run (max |param| {scale:.2f}): autodiff in `lax.scan` "
        f"{diffs[False, 'scan']:.1e}, fast VJP in `lax.scan` {diffs[True, 'scan']:.1e}."
    )
    print(diff_line, flush=True)

    grid_rows = []
    for g in (1, 2, 4):
        for strategy in ("map", "vmap"):
            r = measure_grid(strategy, g, repeats=2)
            grid_rows.append([strategy, g, *_fmt(r, flops)])
            print(" | ".join(str(c) for c in grid_rows[-1]), flush=True)
    grid_header = ["strategy", "G", "ms/model-step (median)", *tail]

    parts = [
        f"Command: `.venv/bin/python {cmd}` (commit {git_revision()}; {cpu_model()}, "
        f"jax {jax.__version__}; ConvNetSI-{CONV_WIDTH}, batch {BATCH}; {flops / 1e9:.2f} "
        f"GFLOP/step from XLA cost analysis; CPUs busy before start: {busy_str}; "
        f"load average after: {load_average()}).",
        "",
        "One member's train step (median of 2-5 calls after 1 warm-up):",
        "",
        markdown_table(header, rows),
        "",
        diff_line,
        "",
        f"Fast VJP inside `GridTrainer.train_epoch` ({STEPS} steps/epoch, median of 2 epochs "
        "after 1 warm-up; `vmap` turns the member axis into grouped convolutions):",
        "",
        markdown_table(grid_header, grid_rows),
    ]
    if args.flags:
        flag_header = ["XLA_FLAGS", "step alone ms", "step in scan ms", "convs (scan)", "note"]
        parts += ["", "Autodiff-VJP step under XLA_FLAGS variants (one subprocess each):", ""]
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
