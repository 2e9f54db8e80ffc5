"""Helpers shared by the benchmark scripts (timing, machine info, FLOP counts, RESULTS.md).

Only the JAX benchmarks import this module; ``torch_baseline.py`` runs in a separate
virtual environment and keeps its own copies of the few helpers it needs.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"

# Reference peak of the brief: single-precision GEMM on both cores of this machine.
SGEMM_PEAK_GFLOPS = 380.0

# Architectures benchmarked (batch 128, as in the paper).
BATCH = 128
MLP_HIDDEN = (300, 100)
CONV_WIDTH = 8


def median_and_min(times: list[float]) -> tuple[float, float]:
    """Median and minimum of a list of timings."""
    return statistics.median(times), min(times)


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall times (s) of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    ``fn`` must block until its result is ready (e.g. end with ``jax.block_until_ready``).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def cpu_busy_fraction(interval: float = 2.0) -> float:
    """Fraction of all CPUs busy (not idle/iowait) over ``interval`` seconds, from /proc/stat."""

    def snap():
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return sum(vals), vals[3] + vals[4]

    try:
        t0, i0 = snap()
        time.sleep(interval)
        t1, i1 = snap()
    except OSError:
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.2) -> float:
    """Waits (up to ``max_wait_s``) until other processes use < ``threshold`` of the CPUs.

    Returns the last busy fraction measured.  Other users of the machine make timings
    noisy; this only lowers the odds of starting in the middle of their work.
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy_fraction()
    while busy >= threshold and time.monotonic() < deadline:
        print(f"# CPUs {100 * busy:.0f}% busy; waiting for a quieter moment", flush=True)
        time.sleep(5.0)
        busy = cpu_busy_fraction()
    return busy


def git_revision() -> str:
    """Short commit of the repository, with ``+dirty`` when the library has local changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        rev = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "three_regimes_jax")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The ``Model name`` line of ``lscpu`` (falls back to ``platform.processor()``)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    m = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return m.group(1).strip() if m else "unknown"


def load_average() -> str:
    """1/5/15-minute load averages (other users of the machine make timings noisy)."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def mlp_flops(hidden=MLP_HIDDEN, in_dim=784, classes=10, batch=BATCH) -> float:
    """Dense-layer FLOPs of one MLP-SI training step (forward + backward).

    Forward: every layer.  Backward: input gradients of every layer but the first
    (the data needs none) and weight gradients of every layer but the frozen last one.
    BatchNorm, ReLU, loss and optimizer are not counted (a few MFLOP at most).
    """
    dims = [in_dim, *hidden, classes]
    macs = [a * b for a, b in zip(dims[:-1], dims[1:], strict=True)]
    fwd, dx, dw = sum(macs), sum(macs[1:]), sum(macs[:-1])
    return 2.0 * batch * (fwd + dx + dw)


def conv_flops(width=CONV_WIDTH, in_ch=3, size=32, classes=10, batch=BATCH) -> float:
    """Convolution/dense FLOPs of one ConvNetSI (depth 3) training step, fwd + bwd.

    Counts every 3x3 tap including the zero padding (XLA's cost analysis skips the
    padded taps and reports a few percent less).
    """
    chans = [in_ch, width, 2 * width, 4 * width, 8 * width]
    sizes = [size, size, size // 2, size // 4]  # spatial size at each conv's output
    macs = [sizes[i] ** 2 * 9 * chans[i] * chans[i + 1] for i in range(4)]
    head = chans[-1] * classes
    fwd = sum(macs) + head
    dx = sum(macs[1:]) + head
    dw = sum(macs)
    return 2.0 * batch * (fwd + dx + dw)


def xla_flops(compiled: Any) -> float:
    """FLOPs from XLA's cost analysis of a compiled executable.

    Note: XLA counts the body of a ``while`` loop (``lax.scan``/``lax.map``) once,
    not once per iteration, so use it on a single step compiled outside any loop.
    """
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):
        ca = ca[0]
    return float(ca.get("flops", float("nan")))


def write_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replaces (or appends) the section ``<!-- BEGIN name -->`` ... ``<!-- END name -->``."""
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


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table (numbers already formatted as strings)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
