"""The benchmark scripts run on CPU (their numbers are not checked: see benchmarks/RESULTS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def _rows(text: str, first: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first} ")
    ]


def test_gpu_benchmark_smoke_one_model(capsys):
    """One MLP row, in this process: a time, and XLA's planned bytes near the planner's estimate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    flags = ["--smoke", "--models", "MLP-SI", "--strategies", "map", "--precisions", "highest"]
    assert gpu.main([*flags, "--no-epoch-target"]) == 0
    rows = _rows(capsys.readouterr().out, "MLP-SI")
    assert len(rows) == 1, rows
    model, strategy, g, precision, _, ms, _, _, estimate, xla, _ = rows[0]
    assert (strategy, g, precision) == ("map", "2", "highest")
    assert float(ms) > 0
    assert 0.5 < float(xla) / float(estimate) < 2.0


@pytest.mark.slow
def test_gpu_benchmark_smoke_everything():
    """The whole --smoke set: both models and strategies, both precisions, the epoch target."""
    text = _run("--smoke")
    assert len(_rows(text, "MLP-SI")) == 4
    assert len(_rows(text, "ConvNetSI-2")) == 4 + 2  # grid rows + epoch-target rows
    assert "Skipped" not in text
