"""Time per member-step of the SI ResNet-18 (``resnet18_si``) at several widths on this machine.

A *member-step* is one SGD step of one grid member on the sphere, batch 128 on
CIFAR-shaped random data (32 x 32 x 3), measured as in ``bench_grid.py``: the
compiled ``GridTrainer.train_epoch`` (``lax.scan`` over mini-batches, the
members run one after another with ``lax.map``, the CPU default for conv
models) timed over whole epochs and divided by G x steps; compilation is
timed apart.  The FLOP rate uses XLA's cost analysis of one step compiled
outside any loop, against the in-run 2048^3 sgemm.

    .venv/bin/python benchmarks/bench_resnet.py            # k = 8 and 32, G = 1
    .venv/bin/python benchmarks/bench_resnet.py --widths 8 --grid-sizes 1,2 --write
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_grid import sgemm_gflops  # noqa: E402
from common import (  # noqa: E402
    BATCH,
    cpu_model,
    git_revision,
    load_average,
    markdown_table,
    median_and_min,
    time_calls,
    write_section,
    xla_flops,
)

from three_regimes_jax.config import Config  # noqa: E402
from three_regimes_jax.engine.grid import member  # noqa: E402
from three_regimes_jax.engine.train import make_train_step  # noqa: E402
from three_regimes_jax.studies.run import make_trainer  # noqa: E402

SHAPE = (32, 32, 3)


def bench(width: int, g: int, steps: int, repeats: int, strategy: str) -> dict:
    """Compile time, ms per member-step (median, min) and XLA FLOPs of one step."""
    cfg = Config.from_flat(
        model="resnet18_si",
        width=width,
        batch_size=BATCH,
        elrs=tuple(float(e) for e in np.logspace(-4, -2, g)),
        strategy=strategy,
        drop_last=True,
    )
    trainer = make_trainer(cfg, 10, SHAPE)
    state = trainer.init(cfg.member_elrs, cfg.member_seeds, SHAPE)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (steps * BATCH, *SHAPE), jnp.float32)
    y = jax.random.randint(ky, (steps * BATCH,), 0, 10, jnp.int32)
    step = jax.jit(make_train_step(trainer.model, trainer.si_mask, trainer.optimizer))
    flops = xla_flops(step.lower(member(state, 0), x[:BATCH], y[:BATCH]).compile())
    t0 = time.perf_counter()
    compiled = trainer.train_epoch_fn.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
    compile_s = time.perf_counter() - t0
    box = [state, 0]

    def run():
        box[0], m = compiled(box[0], x, y, jnp.asarray(box[1], jnp.uint32))
        jax.block_until_ready((box[0], m))
        box[1] += 1

    med, best = median_and_min(time_calls(run, repeats=repeats, warmup=1))
    per = g * steps
    return dict(compile_s=compile_s, ms=1e3 * med / per, ms_min=1e3 * best / per, flops=flops)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="8,32", help="comma-separated width factors k")
    p.add_argument("--grid-sizes", default="1", help="comma-separated G")
    p.add_argument("--steps", type=int, default=2, help="mini-batches per timed epoch")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs (after one warm-up)")
    p.add_argument("--strategy", default="auto", choices=("auto", "vmap", "map"))
    p.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = p.parse_args(argv)
    cmd = "benchmarks/bench_resnet.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    cmd = re.sub(r" --write", "", cmd)
    t_start = time.perf_counter()
    peak = sgemm_gflops()
    print(f"# {cpu_model()}, jax {jax.__version__}; in-run sgemm {peak:.0f} GFLOP/s", flush=True)
    rows = []
    for k in (int(w) for w in args.widths.split(",")):
        for g in (int(v) for v in args.grid_sizes.split(",")):
            r = bench(k, g, args.steps, args.repeats, args.strategy)
            gfs = r["flops"] / (r["ms"] * 1e-3) / 1e9
            rows.append(
                [
                    f"ResNet-18-SI k={k}",
                    g,
                    f"{r['flops'] / 1e9:.1f}",
                    f"{r['compile_s']:.1f}",
                    f"{r['ms']:.0f}",
                    f"{r['ms_min']:.0f}",
                    f"{gfs:.0f}",
                    f"{100 * gfs / peak:.0f}",
                ]
            )
            print(" | ".join(map(str, rows[-1])), flush=True)
    header = ["model", "G", "GFLOP/step (XLA)", "compile s", "ms/member-step (median)"]
    header += ["ms (min)", "GFLOP/s", "% of in-run sgemm"]
    table = markdown_table(header, rows)
    notes = (
        f"Command: `.venv/bin/python {cmd}` (commit {git_revision()}; {cpu_model()}, "
        f"jax {jax.__version__}; batch {BATCH}, {args.steps} steps per epoch, 1 warm-up + "
        f"{args.repeats} timed epochs; in-run 2048^3 sgemm {peak:.0f} GFLOP/s; load average "
        f"after: {load_average()}; total {time.perf_counter() - t_start:.0f} s)."
    )
    print()
    print(table)
    print()
    print(notes)
    if args.write:
        write_section("bench_resnet", "\n".join([notes, "", table]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
