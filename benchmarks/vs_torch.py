"""This library's grid against the paper's PyTorch loop, side by side in one run.

Runs ``torch_baseline.py`` (PyTorch eager, one model at a time, in its own virtual
environment) before and after the JAX measurements, then prints one table: for
each model and grid size G, the JAX grid's ms per member-step (``bench_grid.py``'s
timing of one compiled ``train_epoch``; ``bench_resnet.py``'s for ResNet18SI), the
best PyTorch variant's ms per step (the faster of the two PyTorch runs), their
ratio, and the JAX rate against the in-run 2048^3 sgemm.  The G column shows
whether the cost per member-step falls as the grid grows.

Usage::

    .venv/bin/python benchmarks/vs_torch.py                      # MLP-SI and ConvNetSI-8 (~4 min)
    .venv/bin/python benchmarks/vs_torch.py --resnet             # + ResNet18SI k = 8, 32
    .venv/bin/python benchmarks/vs_torch.py --torch-python PATH  # another PyTorch venv
    .venv/bin/python benchmarks/vs_torch.py --write              # also update RESULTS.md
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import bench_grid
import bench_resnet
from common import cpu_model, git_revision, load_average, markdown_table, write_section

HERE = Path(__file__).resolve().parent
LABELS = {"mlp_si": "MLP-SI 784-300-100", "convnet_si": "ConvNetSI-8"}


def torch_times(python: str, resnet: bool) -> dict[str, float]:
    """``{model label: best median ms/step over PyTorch's variants}`` from one baseline run."""
    cmd = [python, str(HERE / "torch_baseline.py")] + (["--resnet"] if resnet else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    best: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"\| ([^|]+?) \| (\w+) \| ([\d.]+) \|", line)
        if m:
            label, ms = m.group(1), float(m.group(3))
            best[label] = min(best.get(label, float("inf")), ms)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch-python", default="/tmp/torchenv/bin/python")
    ap.add_argument("--mlp-grid-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--conv-grid-sizes", default="1,2,4,8,16")
    ap.add_argument("--resnet", action="store_true", help="also ResNet18SI, k = 8 and 32")
    ap.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    before = torch_times(args.torch_python, args.resnet)
    print(f"# PyTorch before: {before}", flush=True)
    sgemm = bench_grid.sgemm_gflops()
    all_cases = bench_grid.cases(False, False, True)
    rows = []
    jax_ms: dict[tuple[str, str, int], tuple[float, float]] = {}
    for name, sizes in (("mlp_si", args.mlp_grid_sizes), ("convnet_si", args.conv_grid_sizes)):
        case = all_cases[name]
        flops = bench_grid.step_reference(case, repeats=3)["flops"]
        for g in (int(s) for s in sizes.split(",")):
            for strategy, r in bench_grid.grid_epochs(case, ["vmap", "map"], g).items():
                jax_ms[LABELS[name], strategy, g] = (r["ms"], flops)
                print(f"# {name} {strategy} G={g}: {r['ms']:.3g} ms", flush=True)
    if args.resnet:
        for width in (8, 32):
            for g in (1, 2):
                r = bench_resnet.bench(width, g, steps=2, repeats=2, strategy="auto")
                jax_ms[f"ResNet18SI-{width}", "map", g] = (r["ms"], r["flops"])
                print(f"# resnet18_si-{width} G={g}: {r['ms']:.4g} ms", flush=True)
    after = torch_times(args.torch_python, args.resnet)
    print(f"# PyTorch after: {after}", flush=True)
    for (label, strategy, g), (ms, flops) in jax_ms.items():
        torch_ms = min(before.get(label, float("nan")), after.get(label, float("nan")))
        gfs = flops / (ms * 1e-3) / 1e9
        rows.append(
            [
                label, strategy, g, f"{ms:.3g}", f"{torch_ms:.3g}", f"{ms / torch_ms:.2f}x",
                f"{gfs:.0f}", f"{100 * gfs / sgemm:.0f}",
            ]
        )  # fmt: skip
    header = [
        "model", "strategy", "G", "JAX ms/member-step", "PyTorch ms/step (best variant)",
        "JAX / PyTorch", "JAX GFLOP/s", "% of in-run sgemm",
    ]  # fmt: skip
    cmd = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--write")
    notes = (
        f"Command: `.venv/bin/python benchmarks/vs_torch.py {cmd}`".replace(" `", " `")
        + f" (commit {git_revision()}; {cpu_model()}; in-run 2048^3 sgemm {sgemm:.0f} GFLOP/s; "
        f"PyTorch best-variant ms/step before {before}, after {after}; "
        f"load average after: {load_average()}; total {time.perf_counter() - t_start:.0f} s)."
    )
    text = "\n".join([notes, "", markdown_table(header, rows)])
    print(text)
    if args.write:
        write_section("vs_torch" + ("_resnet" if args.resnet else ""), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
