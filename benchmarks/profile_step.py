"""Where the time of a grid training step goes: XLA:CPU's per-operation profile of one epoch.

Runs one compiled ``GridTrainer.train_epoch`` (the same grids as ``bench_grid.py``:
synthetic data, batch 128, one seed, G ELRs) under ``jax.profiler.trace``, reads the
trace back with ``jax.profiler.ProfileData`` and sums each XLA thunk's time over the
epoch.  Each thunk is classified from the compiled HLO (what its fused computation
contains) and named by the JAX operation it came from (HLO metadata), e.g.
``SIConv_1/conv_general_dilated`` under ``transpose(jvp(...))`` is a backward
convolution.  Times are summed over the CPU threads that ran the thunks, so they add
up to CPU time, not wall time; the table gives each category's share and its ms per
member-step scaled to the unprofiled wall time measured just before.

Usage::

    .venv/bin/python benchmarks/profile_step.py --model mlp_si --strategy vmap --grid 8
    .venv/bin/python benchmarks/profile_step.py --model convnet_si --strategy map --grid 2
    .venv/bin/python benchmarks/profile_step.py ... --write   # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from bench_grid import cases, make, synthetic
from common import cpu_model, git_revision, load_average, markdown_table, write_section

SKIP = ("ThunkExecutor", "ThreadpoolListener", "SlinkyThreadPool", "end:", "while")
CATEGORIES = (
    ("convolution", (" convolution(",)),
    ("matmul", (" dot(",)),
    ("gather / scatter", (" gather(", " scatter(", " select-and-scatter(")),
    ("sort (batch order)", (" sort(",)),
    ("reduce-window (pooling; split reductions)", (" reduce-window(",)),
    ("reduction", (" reduce(",)),
    ("copy / transpose", (" copy(", " transpose(")),
)


def hlo_index(text: str) -> dict[str, tuple[str, str, str]]:
    """``{instruction name: (category, source op, shape)}`` from a compiled module's HLO text."""
    bodies, current = {}, None
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
    index = {}
    inst = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(")
    for lines in bodies.values():
        for line in lines:
            m = inst.match(line)
            if not m:
                continue
            name, shape, opcode = m.groups()
            called = re.search(r"calls=%([\w.\-]+)", line)
            body = "\n".join(bodies.get(called.group(1), [])) if called else f" {opcode}("
            category = next(
                (c for c, keys in CATEGORIES if any(k in body for k in keys)), "elementwise"
            )
            op = re.search(r'op_name="([^"]+)"', line)
            source = op.group(1) if op else ""
            source = re.sub(r"^jit\([^)]*\)/|(vmap\(\)|while/body/closed_call)/", "", source)
            index[name] = (category, source, shape)
    return index


def profile(model: str, strategy: str, g: int) -> dict:
    """Op times of one profiled epoch and the unprofiled wall time per member-step."""
    case = cases(False, False, True)[model]
    trainer, state = make(case, strategy, g)
    x, y = synthetic(case, case.steps * 128, seed=1)
    compiled = trainer.train_epoch_fn.lower(state, x, y, jnp.asarray(0, jnp.uint32)).compile()
    walls = []
    for epoch in range(4):
        t0 = time.perf_counter()
        state, m = compiled(state, x, y, jnp.asarray(epoch, jnp.uint32))
        jax.block_until_ready((state, m))
        walls.append(time.perf_counter() - t0)
    steps = g * case.steps
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            state, m = compiled(state, x, y, jnp.asarray(9, jnp.uint32))
            jax.block_until_ready((state, m))
        data = jax.profiler.ProfileData.from_file(
            glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)[0]
        )
    ops = collections.Counter()
    for plane in data.planes:
        for line in plane.lines if plane.name == "/host:CPU" else ():
            for event in line.events if line.name != "python" else ():
                if not event.name.startswith(SKIP):
                    ops[event.name] += event.duration_ns
    return dict(
        label=case.label,
        ops=ops,
        index=hlo_index(compiled.as_text()),
        wall_ms=1e3 * min(walls[1:]) / steps,
        steps=steps,
    )


def tables(p: dict, top: int) -> tuple[str, str]:
    """Markdown tables: time per category, and the ``top`` most expensive thunks."""
    total = sum(p["ops"].values())
    scale = p["wall_ms"] / total  # CPU ns summed over threads -> wall ms per member-step
    cats = collections.Counter()
    for name, ns in p["ops"].items():
        cats[p["index"].get(name, ("other",))[0]] += ns
    cat_rows = [[c, f"{ns * scale:.3f}", f"{100 * ns / total:.1f}"] for c, ns in cats.most_common()]
    op_rows = []
    for name, ns in p["ops"].most_common(top):
        category, source, shape = p["index"].get(name, ("other", "", ""))
        op_rows.append(
            [name, category, source[-70:], shape, f"{ns * scale:.3f}", f"{100 * ns / total:.1f}"]
        )
    return (
        markdown_table(["category", "ms per member-step", "% of op time"], cat_rows),
        markdown_table(
            ["XLA thunk", "category", "from (JAX op)", "shape", "ms per member-step", "%"],
            op_rows,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mlp_si", choices=("mlp_si", "convnet_si"))
    ap.add_argument("--strategy", default="vmap", choices=("vmap", "map"))
    ap.add_argument("--grid", type=int, default=8, help="members G")
    ap.add_argument("--top", type=int, default=12, help="rows of the per-thunk table")
    ap.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = ap.parse_args(argv)
    p = profile(args.model, args.strategy, args.grid)
    by_category, by_op = tables(p, args.top)
    cmd = " ".join(a for a in (argv or sys.argv[1:]) if a != "--write")
    notes = (
        f"Command: `.venv/bin/python benchmarks/profile_step.py {cmd}` (commit "
        f"{git_revision()}; {cpu_model()}, jax {jax.__version__}; load average after: "
        f"{load_average()}). {p['label']}, {args.strategy}, G = {args.grid}: "
        f"{p['wall_ms']:.2f} ms per member-step unprofiled (best of 3 epochs of "
        f"{p['steps'] // args.grid} steps); op times scaled to it."
    )
    text = "\n".join([notes, "", by_category, "", by_op])
    print(text)
    if args.write:
        write_section(f"profile_{args.model}_{args.strategy}{args.grid}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
