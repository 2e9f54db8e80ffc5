"""The whole benchmark set on one accelerator: every model, strategy, grid size and precision.

For each model (MLP-SI, ConvNetSI-8, ConvNetSI-32, ResNet18SI-32), strategy (``vmap``,
``map``), grid size G and matmul precision (``default``: TF32 on NVIDIA GPUs, bf16
passes on TPU; ``highest``: full FP32) this times one compiled
``GridTrainer.train_epoch`` on synthetic data (batch 128, ``drop_last``), as
``bench_grid.py`` does on CPU, and reports ms per member-step, achieved TFLOP/s
(XLA's cost analysis of one step), XLA's planned bytes per member
(``compiled.memory_analysis()``, less the epoch's data, which all members share)
against the planner's estimate
(``engine.memory.member_bytes``) and, on GPU, the process's peak device memory.

It then times the issue's target: one 8-ELR ConvNetSI-32 epoch over 50,000 32x32x3
examples *including the metric passes* (``evaluate``: train loss, accuracy and
effective gradient norm over the 50,000, test loss and accuracy over 10,000), per
precision, against the H200's dense TF32 and FP32 peaks.

Usage::

    .venv/bin/python benchmarks/gpu.py                 # on a GPU: the full set (< 8 min)
    .venv/bin/python benchmarks/gpu.py --write         # also write the table to RESULTS.md
    .venv/bin/python benchmarks/gpu.py --smoke         # tiny shapes, runs anywhere (the test)

Rows that do not fit in ``--budget-s`` are listed as skipped, never silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import git_revision, markdown_table, median_and_min, time_calls, write_section

from three_regimes_jax.config import Config
from three_regimes_jax.engine.grid import member
from three_regimes_jax.engine.memory import member_bytes
from three_regimes_jax.engine.train import make_train_step
from three_regimes_jax.studies.run import make_trainer

# NVIDIA H200 (SXM) datasheet: FP32 67 TFLOP/s; TF32 Tensor Core 989 TFLOP/s with
# sparsity, i.e. 494.5 dense.
PEAK_TFLOPS = {"default": 494.5, "highest": 67.0}
BATCH = 128


@dataclasses.dataclass(frozen=True)
class Model:
    """One benchmarked architecture."""

    label: str
    name: str
    width: int | None
    input_shape: tuple[int, ...]
    grid_sizes: tuple[int, ...]
    steps: int
    hidden: tuple[int, ...] | None = None  # MLP-SI hidden widths (None: 300-100)


FULL = (
    Model("MLP-SI", "mlp_si", None, (28, 28, 1), (1, 2, 4, 8, 16, 32, 64), 32),
    Model("ConvNetSI-8", "convnet_si", 8, (32, 32, 3), (1, 4, 16, 64), 8),
    Model("ConvNetSI-32", "convnet_si", 32, (32, 32, 3), (1, 4, 16, 64), 8),
    Model("ResNet18SI-32", "resnet18_si", 32, (32, 32, 3), (1, 4, 16), 4),
)
SMOKE = (
    Model("MLP-SI", "mlp_si", None, (28, 28, 1), (2,), 2, hidden=(32, 16)),
    Model("ConvNetSI-2", "convnet_si", 2, (32, 32, 3), (2,), 1),
)


def build(model: Model, g: int, strategy: str, precision: str):
    """The trainer and initial state of a G-member grid (one seed, G ELRs)."""
    flat = dict(
        model=model.name,
        batch_size=BATCH,
        elrs=tuple(float(e) for e in np.logspace(-4, -1, g)),
        seeds=(0,),
        strategy=strategy,
        drop_last=True,
        precision=precision,
    )
    if model.width is not None:
        flat["width"] = model.width
    if model.hidden is not None:
        flat["hidden"] = model.hidden
    cfg = Config.from_flat(**flat)
    trainer = make_trainer(cfg, 10, model.input_shape)
    return trainer, trainer.init(cfg.member_elrs, cfg.member_seeds, model.input_shape)


def synthetic(shape: tuple[int, ...], n: int, seed: int = 1):
    """Random inputs ``[n, *shape]`` and labels in ``[0, 10)``."""
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (n, *shape)), jax.random.randint(ky, (n,), 0, 10)


@functools.cache
def _flops(label: str, precision: str) -> dict:
    return {}


def step_flops(trainer, state, model: Model) -> float:
    """XLA's FLOP count of one member's train step (compiled outside any loop; cached)."""
    cache = _flops(model.label, trainer.precision)
    if "flops" in cache:
        return cache["flops"]
    x, y = synthetic(model.input_shape, BATCH)
    step = jax.jit(make_train_step(trainer.model, trainer.si_mask, trainer.optimizer))
    cost = step.lower(member(state, 0), x, y).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    cache["flops"] = float(cost.get("flops", float("nan")))
    return cache["flops"]


def xla_bytes(compiled) -> int:
    """XLA's planned device bytes of an executable: arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )


def peak_device_mb() -> str:
    """The process's peak device memory so far (GPU/TPU), or a dash."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return f"{peak / 2**20:.0f}" if peak else "-"


def grid_row(model: Model, g: int, strategy: str, precision: str, repeats: int) -> list:
    """One table row: the timed epoch of one configuration."""
    trainer, state = build(model, g, strategy, precision)
    x, y = synthetic(model.input_shape, model.steps * BATCH)
    t0 = time.perf_counter()
    compiled = trainer.train_epoch_fn.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
    compile_s = time.perf_counter() - t0
    box = [state, 0]

    def run():
        box[0], metrics = compiled(box[0], x, y, jnp.asarray(box[1], jnp.uint32))
        jax.block_until_ready((box[0], metrics))
        box[1] += 1

    med, best = median_and_min(time_calls(run, repeats=repeats, warmup=1))
    per = 1e3 * med / (g * model.steps)
    flops = step_flops(trainer, state, model)
    estimate = member_bytes(trainer.model, member(state, 0), model.input_shape, BATCH)["total"]
    return [
        model.label,
        trainer.strategy,
        g,
        precision,
        f"{compile_s:.1f}",
        f"{per:.3g}",
        f"{1e3 * best / (g * model.steps):.3g}",
        f"{flops / (per * 1e-3) / 1e12:.3g}",
        f"{estimate / 2**20:.1f}",
        f"{(xla_bytes(compiled) - x.nbytes - y.nbytes) / g / 2**20:.1f}",
        peak_device_mb(),
    ]


def epoch_target(width: int, g: int, n_train: int, n_test: int, precision: str) -> list:
    """Seconds of one full epoch (train + metric passes) of a G-member ConvNetSI grid."""
    model = Model(f"ConvNetSI-{width}", "convnet_si", width, (32, 32, 3), (g,), 1)
    trainer, state = build(model, g, "auto", precision)
    x, y = synthetic(model.input_shape, n_train)
    xt, yt = synthetic(model.input_shape, n_test, seed=2)
    flops = step_flops(trainer, state, model)
    epoch = jnp.asarray(0, jnp.uint32)
    train = trainer.train_epoch_fn.lower(state, x, y, epoch).compile()
    evaluate = trainer.evaluate_fn.lower(state, x, y, xt, yt).compile()
    box = [state, 0]

    def run():
        box[0], m = train(box[0], x, y, jnp.asarray(box[1], jnp.uint32))
        jax.block_until_ready((box[0], m, evaluate(box[0], x, y, xt, yt)))
        box[1] += 1

    seconds, _ = median_and_min(time_calls(run, repeats=2, warmup=1))
    steps = n_train // BATCH
    # train steps + the train metric pass (forward + backward) + the test pass (~forward)
    total = flops * g * (2 * steps + n_test / BATCH / 3)
    tflops = total / seconds / 1e12
    peak = PEAK_TFLOPS[precision]
    return [
        model.label,
        g,
        n_train,
        precision,
        f"{seconds:.2f}",
        f"{total / 1e12:.1f}",
        f"{tflops:.1f}",
        f"{100 * tflops / peak:.1f}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, any backend (a test)")
    ap.add_argument("--write", action="store_true", help="write the tables to RESULTS.md")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip rows after this")
    ap.add_argument("--precisions", default="default,highest")
    ap.add_argument("--strategies", default="vmap,map")
    ap.add_argument("--models", default=None, help="comma-separated labels (default: all)")
    ap.add_argument("--no-epoch-target", action="store_true", help="skip the epoch target")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = jax.devices()[0]
    models = SMOKE if args.smoke else FULL
    if args.models:
        models = [m for m in models if m.label in args.models.split(",")]
    precisions = args.precisions.split(",")
    rows, skipped = [], []
    for model in models:
        for g in model.grid_sizes:
            for strategy in args.strategies.split(","):
                for precision in precisions:
                    if time.perf_counter() - t_start > args.budget_s:
                        skipped.append(f"{model.label} G={g} {strategy} {precision}")
                        continue
                    rows.append(grid_row(model, g, strategy, precision, 1 if args.smoke else 3))
                    print(" | ".join(str(c) for c in rows[-1]), flush=True)
    target = (2, 1, 256, 128) if args.smoke else (32, 8, 50_000, 10_000)
    epochs = [] if args.no_epoch_target else [epoch_target(*target, p) for p in precisions]
    header = [
        "model", "strategy", "G", "precision", "compile s", "ms/member-step (median)",
        "ms (min)", "TFLOP/s", "estimated MB/member", "XLA MB/member", "peak device MB",
    ]  # fmt: skip
    epoch_header = [
        "model", "G", "train examples", "precision", "epoch s (train + metrics)",
        "TFLOP (est.)", "TFLOP/s", "% of H200 peak",
    ]  # fmt: skip
    cmd = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write")
    notes = (
        f"Command: `.venv/bin/python benchmarks/gpu.py {cmd}`".replace(" `", " `", 1)
        + f" (commit {git_revision()}; {device.device_kind}, {jax.default_backend()}, "
        f"jax {jax.__version__}; total {time.perf_counter() - t_start:.0f} s). "
        "H200 peaks: TF32 dense 494.5 TFLOP/s (precision default), FP32 67 TFLOP/s (highest)."
    )
    text = "\n".join(
        [notes, "", markdown_table(header, rows), "", markdown_table(epoch_header, epochs)]
    )
    if skipped:
        text += "\n\nSkipped (over --budget-s): " + "; ".join(skipped)
    print(text)
    if args.write:
        write_section("gpu_smoke" if args.smoke else "gpu", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
