"""sweep --distributed: two processes on 127.0.0.1 (gloo) train one grid; process 0 writes it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
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


def _run_two(sweep: list[str], outs: list) -> None:
    """Runs processes 0 and 1 (``outs[k]``: k's --out); both must exit 0."""
    procs = _spawn_two(sweep, outs)
    try:
        results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [rc for rc, _ in results] == [0, 0], results


def _interrupted_copy(src, dst, last: int) -> None:
    """``dst``: ``src`` as if killed after its checkpoint before ``last`` (resumable)."""
    import shutil

    shutil.copytree(src, dst)
    for f in ("metrics.npz", "summary.json", "config.json", "MANIFEST.sha256"):
        (dst / f).unlink()
    shutil.rmtree(dst / "checkpoints" / str(last))


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
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_train_the_one_process_grid(tmp_path):
    """Metrics equal the one-process run bit for bit (``map``); only process 0 writes."""
    outs = [tmp_path / f"p{k}" for k in range(2)]
    _run_two(SWEEP, outs)
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


@pytest.mark.slow
def test_checkpoints_restore_and_resume_with_another_process_count(tmp_path):
    """Process 0 saves the whole grid: it equals the one-process checkpoint, and a run
    interrupted with 1 process resumes with 2, and one with 2 resumes with 1, each
    writing the uninterrupted run's metrics.npz byte for byte."""
    from three_regimes_jax.storage.checkpoint import load_checkpoint, read_meta
    from three_regimes_jax.studies.run import state_template

    sweep = [a if a != "2" else "4" for a in SWEEP] + ["--checkpoint-every", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*sweep, "--out", str(one)]) == 0
    _run_two(sweep, [two, two])
    assert (two / "metrics.npz").read_bytes() == (one / "metrics.npz").read_bytes()
    meta = read_meta(two, 4)
    a, _ = load_checkpoint(two, 4, template=state_template(meta))
    b, _ = load_checkpoint(one, 4, template=state_template(read_meta(one, 4)))
    for x, y in zip(*(jax.tree.leaves(s) for s in (a, b)), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert meta["seed"] == read_meta(one, 4)["seed"]

    _interrupted_copy(one, tmp_path / "r2", 4)  # 1 process trained, 2 resume
    _run_two([*sweep, "--resume"], [tmp_path / "r2"] * 2)
    _interrupted_copy(two, tmp_path / "r1", 4)  # 2 processes trained, 1 resumes
    assert main([*sweep, "--out", str(tmp_path / "r1"), "--resume"]) == 0
    for r in ("r1", "r2"):
        assert load_results(tmp_path / r).summary["resumed_from_epoch"] == 2
        assert (tmp_path / r / "metrics.npz").read_bytes() == (one / "metrics.npz").read_bytes()
