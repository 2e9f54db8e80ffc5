"""PyTorch CPU baseline: one single-model training step of MLP-SI and ConvNetSI-8.

The step matches ``GridTrainer``'s: forward in train mode (BatchNorm without affine
parameters, batch statistics, running statistics updated), cross-entropy,
backward, SGD at a fixed effective learning rate (``lr = elr * rho**2``) on the
scale-invariant parameters, then the SI parameters are rescaled jointly back onto
the sphere of radius ``rho``; per-group norms, gradient norms and the batch
accuracy are computed as the library's metrics.  The last layer is frozen.

Runs in its own virtual environment (it must not be imported by the tests and
does not import JAX or the library)::

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy
    /tmp/torchenv/bin/python benchmarks/torch_baseline.py            # ~30 s
    /tmp/torchenv/bin/python benchmarks/torch_baseline.py --compile  # + torch.compile (~2 min)

GFLOP/s use XLA's cost analysis of the same step (printed by ``bench_grid.py``),
so they compare directly with the JAX tables.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

BATCH = 128
SGEMM_PEAK_GFLOPS = 380.0
# FLOPs per step from XLA's cost analysis (bench_grid.py and bench_resnet.py print them).
XLA_FLOPS = {
    "mlp_si": 150e6,
    "convnet_si": 2737e6,
    "resnet18_si-8": 6.2e9,
    "resnet18_si-32": 94.2e9,
}


class FrozenLinear(nn.Linear):
    """Last layer: PyTorch init, weight rescaled to Frobenius norm ``init_scale``, frozen."""

    def __init__(self, fan_in: int, classes: int, init_scale: float = 10.0):
        super().__init__(fan_in, classes)
        with torch.no_grad():
            self.weight.mul_(init_scale / self.weight.norm())
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)


def mlp_si(hidden=(300, 100), in_dim=784, classes=10) -> nn.Module:
    """784-300-BN-ReLU-100-BN-ReLU-frozen linear (bias-free SI layers)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(in_dim, h, bias=False), nn.BatchNorm1d(h, affine=False), nn.ReLU()]
        in_dim = h
    return nn.Sequential(*layers, FrozenLinear(in_dim, classes))


def convnet_si(width=8, in_ch=3, classes=10) -> nn.Module:
    """ConvNetSI depth 3: conv-BN-ReLU, 3 x (conv-BN-ReLU-maxpool2), maxpool4, frozen linear."""

    def block(cin, cout):
        return [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout, affine=False),
            nn.ReLU(),
        ]

    c = width
    layers = block(in_ch, c)
    for _ in range(3):
        layers += [*block(c, 2 * c), nn.MaxPool2d(2)]
        c *= 2
    layers += [nn.MaxPool2d(4), nn.Flatten(), FrozenLinear(c, classes)]
    return nn.Sequential(*layers)


class PreActBlock(nn.Module):
    """The SI pre-activation block: relu(bn1) -> conv1 -> relu(bn2) -> conv2, plus shortcut.

    The shortcut is a BN then a 1x1 convolution of ``relu(bn1(x))`` when the stride or
    the width changes (the official ``resnet_si.py``), else ``x``.
    """

    def __init__(self, cin: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, affine=False)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, affine=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != planes:
            self.shortcut = nn.Sequential(
                nn.BatchNorm2d(cin, affine=False), nn.Conv2d(cin, planes, 1, stride, bias=False)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(x))
        sc = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        return self.conv2(torch.relu(self.bn2(out))) + sc


class ResNet18SI(nn.Module):
    """ResNet18SI of width k: stem conv, 4 stages of 2 blocks, BN-ReLU, avgpool 4, frozen head."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        blocks, cin = [], width
        for stage in range(4):
            for b in range(2):
                planes = width * 2**stage
                blocks.append(PreActBlock(cin, planes, 2 if stage > 0 and b == 0 else 1))
                cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin, affine=False)
        self.head = FrozenLinear(cin, classes)
        self.head.bias.data.zero_()  # the SI head has no bias

    def forward(self, x):
        x = torch.relu(self.bn(self.blocks(self.conv1(x))))
        return self.head(torch.flatten(nn.functional.avg_pool2d(x, 4), 1))


def make_step(model: nn.Module, elr: float):
    """The fixed-ELR projected SGD step; returns ``step(x, y) -> (loss, acc, stats)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        rho = torch.sqrt(sum((p * p).sum() for p in params))
    lr = elr * rho**2
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        for p in params:
            p.grad = None
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        with torch.no_grad():
            grads = [p.grad for p in params]
            rho_sq = torch.stack([(p * p).sum() for p in params])
            grad_sq = torch.stack([(g * g).sum() for g in grads])
            stats = (lr / rho_sq, grad_sq.sqrt() * rho_sq.sqrt())  # group ELR, eff. grad norm
            torch._foreach_add_(params, grads, alpha=-float(lr))
            scale = rho / torch.sqrt(sum((p * p).sum() for p in params))
            torch._foreach_mul_(params, scale)
            acc = (logits.argmax(-1) == y).float().mean()
        return loss.detach(), acc, stats

    return step


def bench(name: str, variant: str, steps: int, repeats: int) -> dict:
    """Median ms/step over ``repeats`` timed runs of ``steps`` steps, after a warm-up run."""
    torch.manual_seed(0)
    if name == "mlp_si":
        model, shape = mlp_si(), (1, 28, 28)
    elif name.startswith("resnet18_si"):
        model, shape = ResNet18SI(int(name.rsplit("-", 1)[1])), (3, 32, 32)
    else:
        model, shape = convnet_si(), (3, 32, 32)
    xs = torch.randn(steps, BATCH, *shape)
    ys = torch.randint(0, 10, (steps, BATCH))
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        xs = torch.stack([x.contiguous(memory_format=torch.channels_last) for x in xs])
    model.train()
    step = make_step(model, elr=1e-3)
    if variant == "compile":
        # Compiling the whole step (with backward and optimizer) fails in inductor
        # ("Cannot convert expression to float"); compile the model's forward only.
        step = make_step(torch.compile(model, dynamic=False), elr=1e-3)

    def run():
        for i in range(steps):
            out = step(xs[i], ys[i])
        return out

    t0 = time.perf_counter()
    run()  # warm-up (includes torch.compile's compilation)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) / steps)
    med = statistics.median(times)
    return dict(ms=1e3 * med, ms_min=1e3 * min(times), warm_s=warm_s)


def write_section(name: str, body: str) -> None:
    """Replaces (or appends) a ``<!-- BEGIN name -->`` section of RESULTS.md (as common.py)."""
    path = Path(__file__).resolve().parent / "RESULTS.md"
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote section {name!r} of {path}")


def wait_for_quiet(max_wait_s: float, threshold: float = 0.2) -> float:
    """Waits (up to ``max_wait_s``) until the CPUs are < ``threshold`` busy; returns the fraction.

    A copy of ``common.wait_for_quiet`` (this script does not import the JAX helpers).
    """

    def busy(interval: float = 2.0) -> float:
        def snap():
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
            return sum(vals), vals[3] + vals[4]

        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
        return 1.0 - (i1 - i0) / max(t1 - t0, 1)

    deadline = time.monotonic() + max_wait_s
    b = busy()
    while b >= threshold and time.monotonic() < deadline:
        print(f"# CPUs {100 * b:.0f}% busy; waiting for a quieter moment", flush=True)
        time.sleep(5.0)
        b = busy()
    return b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    p.add_argument("--resnet", action="store_true", help="also ResNet18SI at k = 8 and 32")
    p.add_argument("--write", action="store_true", help="replace the section in RESULTS.md")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to S seconds for idle CPUs first"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    busy = wait_for_quiet(args.wait_quiet) if args.wait_quiet > 0 else float("nan")
    cmd = "benchmarks/torch_baseline.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    cmd = re.sub(r" --write| --wait-quiet[ =]\S+", "", cmd)
    if os.environ.get("OMP_WAIT_POLICY"):
        cmd = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} /tmp/torchenv/bin/python {cmd}"
    else:
        cmd = f"/tmp/torchenv/bin/python {cmd}"
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"capability {torch.backends.cpu.get_cpu_capability()}, {platform.machine()}, "
        f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    header = "| model | variant | ms/step (median) | ms (min) | GFLOP/s | % of 380 | warm-up s |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    print(header)
    plan = [("mlp_si", "eager", 64, 7), ("convnet_si", "eager", 16, 7)]
    plan += [("convnet_si", "channels_last", 16, 7)]
    if args.compile:
        plan += [("mlp_si", "compile", 64, 7), ("convnet_si", "compile", 16, 7)]
    if args.resnet:
        plan += [
            ("resnet18_si-8", "channels_last", 4, 3),
            ("resnet18_si-32", "channels_last", 2, 3),
        ]
    for name, variant, steps, repeats in plan:
        try:
            r = bench(name, variant, steps, repeats)
        except Exception as e:  # noqa: BLE001 - report and go on
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}" if str(e) else repr(e)
            print(f"{name} {variant} failed: {err}", flush=True)
            lines.append(f"| {name} | {variant} | failed: {err} | | | | |")
            continue
        gfs = XLA_FLOPS[name] / (r["ms"] * 1e-3) / 1e9
        labels = {"mlp_si": "MLP-SI 784-300-100", "convnet_si": "ConvNetSI-8"}
        label = labels.get(name, name.replace("resnet18_si-", "ResNet18SI-"))
        line = (
            f"| {label} | {variant} | {r['ms']:.2f} | {r['ms_min']:.2f} | {gfs:.1f} | "
            f"{100 * gfs / SGEMM_PEAK_GFLOPS:.1f} | {r['warm_s']:.1f} |"
        )
        lines.append(line)
        print(line, flush=True)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    busy_str = "not checked" if busy != busy else f"{100 * busy:.0f}%"
    notes = (
        f"Command: `{cmd}` (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {BATCH}; median of 7 timed runs of 64 (MLP) / "
        f"16 (conv) steps after a warm-up run; CPUs busy before start: {busy_str}; "
        f"load average after: {load})."
    )
    print()
    print(notes)
    if args.write:
        name = "torch_baseline" + ("_compile" if args.compile else "")
        name += "" if args.threads == os.cpu_count() else f"_threads{args.threads}"
        name += "_omp_passive" if os.environ.get("OMP_WAIT_POLICY") else ""
        name += "_resnet" if args.resnet else ""
        write_section(name, notes + "\n\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
