"""sweep --distributed: two processes on 127.0.0.1 (gloo) train one grid; process 0 writes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from three_regimes_jax import load_results
from three_regimes_jax.cli import main

SWEEP = ["sweep", "--dataset", "digits", "--elrs", "1e-3,1e-2,1e-1,1", "--epochs", "2",
         "--batch-size", "64", "--hidden", "32,16", "--use-data-size", "200",
         "--use-test-size", "100", "--strategy", "map", "--quiet"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_two(sweep: list[str], outs: list) -> list[subprocess.Popen]:
    """Processes 0 and 1 of one ``--distributed`` sweep on 127.0.0.1 (``outs[k]``: k's --out)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    flags = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    cli = [sys.executable, "-m", "three_regimes_jax.cli", *sweep, *flags]
    return [
        subprocess.Popen(
            [*cli, "--out", str(outs[k]), "--process-id", str(k)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]


def test_distributed_flags_are_checked_before_anything_starts(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SWEEP, "--out", str(out), "--coordinator", "127.0.0.1:1"]) == 2
    assert "need --distributed" in capsys.readouterr().err
    flags = [*SWEEP, "--out", str(out), "--distributed"]
    assert main([*flags, "--coordinator", "127.0.0.1:1", "--process-id", "0"]) == 2
    assert "missing --num-processes" in capsys.readouterr().err
    assert main([*flags, "--checkpoint-every", "1"]) == 2
    assert "does not checkpoint" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_train_the_one_process_grid(tmp_path):
    """Metrics equal the one-process run bit for bit (``map``); only process 0 writes."""
    outs = [tmp_path / f"p{k}" for k in range(2)]
    procs = _spawn_two(SWEEP, outs)
    try:
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [rc for rc, _ in results] == [0, 0], results
    assert not outs[1].exists()  # process 1 writes nothing
    assert main([*SWEEP, "--out", str(tmp_path / "one")]) == 0
    two, one = load_results(outs[0]), load_results(tmp_path / "one")
    assert two.config == one.config
    for k, v in one.metrics.items():
        np.testing.assert_array_equal(two.metrics[k], v, err_msg=k)
    assert two.summary["devices"] == 2


@pytest.mark.slow
def test_a_killed_process_ends_the_run_with_one_line_not_a_hang(tmp_path):
    """Process 1 is killed mid-run: process 0 exits 2 with one line, writing nothing."""
    import time

    out = tmp_path / "run"
    long = [a if a != "2" else "500" for a in SWEEP]  # --epochs 500: still training when killed
    procs = _spawn_two(long, [out, out])
    try:
        time.sleep(15)  # both started and training
        assert procs[0].poll() is None, procs[0].stderr.read()
        procs[1].kill()
        t0 = time.perf_counter()
        rc = procs[0].wait(timeout=120)
        err = [ln for ln in procs[0].stderr.read().splitlines() if ln.startswith("three-regimes")]
        assert rc == 2 and len(err) == 1 and "another process" in err[0], err
        assert time.perf_counter() - t0 < 60
        assert not out.exists()
    finally:
        for p in procs:
            p.kill()
