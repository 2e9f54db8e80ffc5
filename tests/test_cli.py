"""End to end: `three-regimes sweep` on real data, the results format, and every error path."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from three_regimes_jax import Config, load_results, run_sweep
from three_regimes_jax.cli import main

TINY = ["--dataset", "digits", "--use-data-size", "256", "--hidden", "32,16", "--batch-size", "64"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sweep"
    argv = ["sweep", *TINY, "--elrs", "1e-3,1e-1,1e38", "--seeds", "0,1", "--epochs", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_sweep_writes_documented_results(sweep_dir, capsys):
    assert sorted(p.name for p in sweep_dir.iterdir()) == [
        ".three-regimes.json",
        "MANIFEST.sha256",
        "config.json",
        "metrics.npz",
        "summary.json",
    ]
    res = load_results(sweep_dir)
    m = res.metrics
    g, t = 6, 3
    assert m["elr"].tolist() == [1e-3, 1e-3, 1e-1, 1e-1, 1e38, 1e38]
    assert m["seed"].tolist() == [0, 1, 0, 1, 0, 1]
    assert m["epoch"].tolist() == [0, 1, 2]  # epoch 0: the initialization
    for k in ("train_loss", "train_acc", "test_loss", "test_acc", "eff_grad_norm", "si_norm"):
        assert m[k].shape == (g, t), k
    for k in ("group_elr", "group_eff_grad_norm", "group_ess"):
        assert m[k].shape == (g, t, 2), k
    assert m["group_names"].tolist() == ["SIDense_0/kernel", "SIDense_1/kernel"]
    # the ELR-1e38 members overflow: recorded, NaN from epoch 1, the others finite
    assert m["diverged"].tolist() == [False, False, False, False, True, True]
    assert np.isnan(m["train_loss"][4:, 1:]).all() and np.isfinite(m["train_loss"][:4]).all()
    assert m["diverged_epoch"].tolist() == [-1, -1, -1, -1, 1, 1]
    assert np.isfinite(m["train_loss"][:, 0]).all()  # the init is measured, for every member
    # no step at the init: the step metrics are NaN there and finite after
    for k in ("batch_loss", "eff_grad_norm_traj", "step_cos", "adjacent_cos"):
        assert np.isnan(m[k][:, 0]).all() and np.isfinite(m[k][:4, 1:]).all(), k
    assert res.config["train"]["elrs"] == [1e-3, 1e-1, 1e38] and res.config["kind"] == "sweep"
    rows = res.summary["members"]
    assert len(rows) == g and rows[0]["train_loss"] == pytest.approx(float(m["train_loss"][0, -1]))
    si = m["si_norm"][:4]
    np.testing.assert_allclose(si, np.broadcast_to(si[:, :1], si.shape), rtol=1e-5)  # on the sphere


def test_python_api_mirrors_cli(sweep_dir, digits):
    """run_sweep on the config the CLI wrote: the same numbers (and the same NaNs)."""
    cfg = Config.from_dict(json.loads((sweep_dir / "config.json").read_text()))
    res = run_sweep(cfg, progress=False)
    ref = load_results(sweep_dir).metrics
    for k in ("train_loss", "test_acc", "si_norm"):
        np.testing.assert_allclose(res.metrics[k], ref[k], rtol=1e-5, err_msg=k)
    assert res.metrics["diverged"].tolist() == ref["diverged"].tolist()


def test_rerun_same_config_is_allowed_and_different_run_is_refused(sweep_dir, capsys):
    argv = ["sweep", *TINY, "--elrs", "1e-2", "--epochs", "1", "--out", str(sweep_dir)]
    before = (sweep_dir / "metrics.npz").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different run" in err[0] and "--overwrite" in err[0]
    assert (sweep_dir / "metrics.npz").read_bytes() == before


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--elrs", "0"], "ELR"),
        (["--elrs=-1e-3"], "ELR"),
        (["--elrs", "nan"], "ELR"),
        (["--elrs", "inf"], "ELR"),
        (["--elrs", ","], "empty"),
        (["--elrs", "abc"], "--elrs"),
        (["--elrs", "1e-3", "--model", "resnet9"], "unknown model"),
        (["--elrs", "1e-3", "--dataset", "svhn"], "unknown dataset"),
        (["--elrs", "1e-3", "--model", "convnet_si", "--width", "0"], "width"),
        (["--elrs", "1e-3", "--seeds", ""], "empty"),
        (["--elrs", "1e-3", "--label-noise", "1.5"], "--label-noise"),
        (["--elrs", "1e-3", "--epochs", "0"], "epochs"),
        (["--elrs", "1e-3", "--bogus"], "unrecognized"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    argv = ["sweep", "--use-data-size", "64", "--epochs", "1", "--out", str(out), *extra]
    if "--epochs" in extra:
        argv = ["sweep", "--use-data-size", "64", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("three-regimes: error:") and needle in err[0], err
    assert not out.exists()


def test_unwritable_and_file_out(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["sweep", "--elrs", "1e-3", "--epochs", "1", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["sweep", "--elrs", "1e-3", "--epochs", "1", "--out", str(f / "sub" / "x")]) == 2
    assert "cannot be written" in capsys.readouterr().err
    assert f.read_text() == "x"


def test_read_only_out(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert main(["sweep", "--elrs", "1e-3", "--epochs", "1", "--out", str(ro / "x")]) == 2
        assert "cannot be written" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_nonempty_foreign_dir_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["sweep", *TINY, "--elrs", "1e-3,1e-1,1e38", "--seeds", "0,1", "--epochs", "1"]
    argv += ["--quiet", "--out", str(out)]  # sweep_dir's grid: its compiled programs
    assert main(argv) == 2
    assert "not written by three-regimes" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "metrics.npz").exists() and (out / "notes.txt").exists()


def test_missing_dataset_names_the_path(tmp_path, capsys):
    out = tmp_path / "o"
    argv = [
        "sweep",
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "nowhere"),
        "--elrs",
        "1e-3",
    ]
    assert main([*argv, "--epochs", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_console_script_exit_code(tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "three_regimes_jax.cli", "sweep", "--elrs", "-1", "--epochs", "1"]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "three-regimes: error: every ELR must be a finite number > 0, got -1.0 in --elrs"
    ]
    assert not out.exists()


def test_mnist_end_to_end(mnist_dir, tmp_path, capsys):
    """Real MNIST from ../shared/data/mnist: 1 epoch on 2,000 examples learns."""
    out = tmp_path / "mnist"
    argv = ["sweep", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--use-data-size", "2000"]
    assert main([*argv, "--elrs", "1e-3,1e-2", "--epochs", "1", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "ELR" in table and "eff grad norm" in table
    m = load_results(out).metrics
    assert (m["test_acc"][:, -1] > 0.7).all(), m["test_acc"]
