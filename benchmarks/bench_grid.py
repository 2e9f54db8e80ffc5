"""Time per model-step of ``GridTrainer.train_epoch`` for grids of G members, vmap vs map.

A *model-step* is one SGD step of one member: the wall time of one compiled
``train_epoch`` (``lax.scan`` over mini-batches inside ``vmap``/``lax.map`` over
members) divided by ``G x steps per epoch``.  Compilation is timed separately
(``jit(...).lower(...).compile()``) and excluded.  Inputs are synthetic random
data (``steps x 128`` examples, ``drop_last`` so every step has batch 128).

Each configuration is compiled once, run ``warmup`` untimed epochs, then
``repeats`` timed epochs; the table gives the median (and the minimum) over the
timed epochs.  A reference row per model times one jitted step called from
Python (no loop around it), i.e. XLA's best case for the same computation.

GFLOP/s use XLA's cost analysis of one step compiled outside any loop (the cost
analysis counts a ``while`` body once, so it cannot be taken from the epoch).

Usage::

    .venv/bin/python benchmarks/bench_grid.py            # default run (~2 min)
    .venv/bin/python benchmarks/bench_grid.py --quick    # fewer G values and steps (~30-40 s)
    .venv/bin/python benchmarks/bench_grid.py --full     # more steps and repeats (~4 min)
    .venv/bin/python benchmarks/bench_grid.py --write    # also update RESULTS.md
    .venv/bin/python benchmarks/bench_grid.py --models convnet_si --conv-vjp autodiff
        # ConvNetSI with JAX's own conv VJP (fast_vjp=False): the state before the
        # fast VJP, 1-3 s per step in the loops, so G=1,2 and one short epoch (~1 min)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import (
    BATCH,
    CONV_WIDTH,
    SGEMM_PEAK_GFLOPS,
    conv_flops,
    cpu_model,
    git_revision,
    load_average,
    markdown_table,
    median_and_min,
    mlp_flops,
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


@dataclasses.dataclass(frozen=True)
class Case:
    """One model's benchmark settings."""

    model: str
    label: str
    input_shape: tuple[int, ...]
    steps: int  # mini-batches per epoch
    repeats: int  # timed epochs per configuration
    warmup: int  # untimed epochs after compilation
    analytic_flops: float
    fast_vjp: bool = True  # ConvNetSI only: SIConv(fast_vjp=...)


def cases(quick: bool, full: bool, fast_vjp: bool) -> dict[str, Case]:
    """Benchmark settings per model.

    With JAX's own conv VJP (``fast_vjp=False``) a ConvNetSI step takes 1-3 s inside
    the library's loops, so its epochs are then short (2 steps: per-epoch overhead
    is < 1 ms, nothing to amortize) with no warm-up epoch and one timed epoch.
    """
    mlp_steps, mlp_reps = (16, 3) if quick else (32, 5)
    conv_steps, conv_reps = (2, 1) if quick else (8, 3) if full else (4, 2)
    conv_warmup = 1
    if not fast_vjp:
        conv_steps, conv_reps, conv_warmup = 2, 1, 0
    label = f"ConvNetSI-{CONV_WIDTH}" + ("" if fast_vjp else " (autodiff conv VJP)")
    return {
        "mlp_si": Case(
            "mlp_si", "MLP-SI 784-300-100", (28, 28, 1), mlp_steps, mlp_reps, 1, mlp_flops()
        ),
        "convnet_si": Case(
            "convnet_si", label, (32, 32, 3), conv_steps, conv_reps, conv_warmup, conv_flops(),
            fast_vjp,
        ),
    }  # fmt: skip


def synthetic(case: Case, n: int, seed: int = 0):
    """Random inputs ``[n, *input_shape]`` and labels in ``[0, 10)``."""
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, *case.input_shape), jnp.float32)
    y = jax.random.randint(ky, (n,), 0, 10, jnp.int32)
    return x, y


def make(case: Case, strategy: str, g: int):
    """Trainer and initial grid state of ``g`` members (one seed, ``g`` ELRs)."""
    cfg = Config.from_flat(
        model=case.model,
        width=CONV_WIDTH,
        batch_size=BATCH,
        elrs=tuple(float(e) for e in np.logspace(-4, -1, g)),
        seeds=(0,),
        strategy=strategy,
        drop_last=True,
    )
    trainer = make_trainer(cfg, 10, case.input_shape)
    if case.model == "convnet_si":
        # The trainer's functions are built from its model: rebuild with the VJP variant.
        trainer = GridTrainer(
            trainer.model.clone(fast_vjp=case.fast_vjp),
            trainer.si_mask,
            batch_size=BATCH,
            strategy=strategy,
            drop_last=True,
        )
    state = trainer.init(cfg.member_elrs, cfg.member_seeds, case.input_shape)
    return trainer, state


def step_reference(case: Case, repeats: int) -> dict:
    """One member's train step jitted on its own, called from Python (no scan/map)."""
    trainer, state = make(case, "vmap", 1)
    ms = member(state, 0)
    x, y = synthetic(case, BATCH, seed=1)
    t0 = time.perf_counter()
    compiled = (
        jax.jit(make_train_step(trainer.model, trainer.si_mask, trainer.optimizer))
        .lower(ms, x, y)
        .compile()
    )
    compile_s = time.perf_counter() - t0
    flops = xla_flops(compiled)
    box = [ms]

    def run():
        box[0], m = compiled(box[0], x, y)
        jax.block_until_ready((box[0], m))

    times = time_calls(run, repeats=repeats, warmup=2)
    med, best = median_and_min(times)
    return dict(compile_s=compile_s, ms=1e3 * med, ms_min=1e3 * best, flops=flops)


def grid_epochs(case: Case, strategies: list[str], g: int) -> dict[str, dict]:
    """Median time per model-step of ``train_epoch`` for a grid of ``g`` members, per strategy.

    The strategies' timed epochs are interleaved (A B A B ...) so that slow phases of
    other processes on the machine hit them alike.
    """
    x, y = synthetic(case, case.steps * BATCH, seed=1)
    runs, compile_s = {}, {}
    for strategy in strategies:
        trainer, state = make(case, strategy, g)
        t0 = time.perf_counter()
        # The function train_epoch calls (jit of vmap/lax.map of lax.scan of the step).
        compiled = trainer.train_epoch_fn.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
        compile_s[strategy] = time.perf_counter() - t0
        box = [state, 0]

        def run(compiled=compiled, box=box):
            box[0], metrics = compiled(box[0], x, y, jnp.asarray(box[1], jnp.uint32))
            jax.block_until_ready((box[0], metrics))
            box[1] += 1

        runs[strategy] = run
    times = {s: [] for s in strategies}
    for s in strategies:
        time_calls(runs[s], repeats=0, warmup=case.warmup)
    for _ in range(case.repeats):
        for s in strategies:
            times[s] += time_calls(runs[s], repeats=1, warmup=0)
    per = g * case.steps
    out = {}
    for s in strategies:
        med, best = median_and_min(times[s])
        out[s] = dict(compile_s=compile_s[s], ms=1e3 * med / per, ms_min=1e3 * best / per)
    return out


def fmt_ms(ms: float) -> str:
    """Milliseconds with 3 significant digits, no exponent."""
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def sgemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best-of-``repeats`` GFLOP/s of a jitted ``n x n`` float32 matmul (the in-run peak)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    times = time_calls(lambda: f(a).block_until_ready(), repeats=repeats, warmup=2)
    return 2.0 * n**3 / min(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer G values and repeats (~40 s)")
    p.add_argument("--full", action="store_true", help="ConvNetSI also at G=8, 2 repeats")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to S seconds for idle CPUs first"
    )
    p.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    p.add_argument("--models", default="mlp_si,convnet_si", help="comma-separated models")
    p.add_argument("--strategies", default="vmap,map", help="comma-separated strategies")
    p.add_argument(
        "--reference-only", action="store_true", help="only the one-jitted-step reference rows"
    )
    p.add_argument(
        "--conv-vjp",
        choices=("fast", "autodiff"),
        default="fast",
        help="ConvNetSI conv VJP: the library default (fast) or JAX's own (autodiff, slow)",
    )
    p.add_argument("--grid-sizes", default=None, help="override G values, e.g. 1,2,4,8")
    args = p.parse_args(argv)

    quick, full = args.quick, args.full and not args.quick
    fast_vjp = args.conv_vjp == "fast"
    all_cases = cases(quick, full, fast_vjp)
    models = [m for m in args.models.split(",") if m]
    strategies = [s for s in args.strategies.split(",") if s]
    default_g = {"mlp_si": (1, 4) if quick else (1, 2, 4, 8)}
    default_g["convnet_si"] = (1, 2) if quick or not fast_vjp else (1, 2, 4, 8)
    cmd = "benchmarks/bench_grid.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    cmd = re.sub(r" --write| --wait-quiet[ =]\S+", "", cmd)

    busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else float("nan")
    busy_str = "not checked" if busy != busy else f"{100 * busy:.0f}%"
    t_start = time.perf_counter()
    print(f"# {cpu_model()}, {jax.device_count()} x {jax.default_backend()}, jax {jax.__version__}")
    print(f"# load average before: {load_average()}")
    peak_now = sgemm_gflops()
    print(f"# jitted 2048^3 sgemm in this run: {peak_now:.0f} GFLOP/s (reference peak 380)")

    rows, ratios, model_notes = [], [], []
    for name in models:
        case = all_cases[name]
        gs = (
            tuple(int(g) for g in args.grid_sizes.split(","))
            if args.grid_sizes
            else default_g[name]
        )
        ref = step_reference(case, repeats=5 if name == "convnet_si" else 20)
        flops = ref["flops"]
        model_notes.append(
            f"{case.label}: XLA cost analysis {flops / 1e6:.0f} MFLOP/step (analytic "
            f"{case.analytic_flops / 1e6:.0f}); {case.steps} steps/epoch, {case.warmup} warm-up "
            f"+ {case.repeats} timed epochs per configuration."
        )
        print("## " + model_notes[-1], flush=True)

        def row(strategy, g, steps, r, case=case, flops=flops, echo=True):
            gfs = flops / (r["ms"] * 1e-3) / 1e9
            out = [
                case.label,
                strategy,
                g,
                steps,
                f"{r['compile_s']:.1f}",
                fmt_ms(r["ms"]),
                fmt_ms(r["ms_min"]),
                f"{gfs:.1f}",
                f"{100 * gfs / SGEMM_PEAK_GFLOPS:.1f}",
            ]
            if echo:
                print(" | ".join(str(c) for c in out), flush=True)
            return out

        rows.append(row("one jitted step, no loop (reference)", 1, 1, ref))
        if args.reference_only:
            continue
        results = {}
        for g in gs:
            for strategy, r in grid_epochs(case, strategies, g).items():
                results[strategy, g] = r
                row(strategy, g, case.steps, r)
        rows += [row(s, g, case.steps, results[s, g], echo=False) for s in strategies for g in gs]
        for g in gs if {"vmap", "map"} <= set(strategies) else ():
            v, m = results["vmap", g]["ms"], results["map", g]["ms"]
            faster = f"{max(v, m) / min(v, m):.2f}x {'vmap' if v < m else 'map'}"
            ratios.append([case.label, g, fmt_ms(v), fmt_ms(m), faster])

    header = [
        "model",
        "strategy",
        "G",
        "steps/epoch",
        "compile s",
        "ms/model-step (median)",
        "ms (min)",
        "GFLOP/s",
        f"% of {SGEMM_PEAK_GFLOPS:.0f}",
    ]
    table = markdown_table(header, rows)
    if ratios:
        ratio_header = ["model", "G", "vmap ms/model-step", "map ms/model-step", "faster"]
        table += "\n\nStrategy comparison (same runs; timed epochs interleaved):\n\n"
        table += markdown_table(ratio_header, ratios)
    total = time.perf_counter() - t_start
    notes = (
        f"Command: `.venv/bin/python {cmd}` "
        f"(commit {git_revision()}; {cpu_model()}, {jax.device_count()} CPU device, "
        f"jax {jax.__version__}; "
        f"CPUs busy before start: {busy_str}; load average after: {load_average()}; "
        f"in-run 2048^3 sgemm {peak_now:.0f} GFLOP/s; "
        f"total {total:.0f} s)."
    )
    print()
    print(table)
    print()
    print(notes)
    if args.write:
        section = "bench_grid_quick" if quick else "bench_grid_full" if full else "bench_grid"
        section += "" if fast_vjp else "_autodiff_conv"
        section = "bench_grid_reference" if args.reference_only else section
        if args.grid_sizes:
            section += f"_{'_'.join(models)}_g{args.grid_sizes.replace(',', '_')}"
        write_section(section, "\n".join([notes, "", *model_notes, "", table]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
