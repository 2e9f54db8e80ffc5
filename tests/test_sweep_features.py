"""Sweep features: checkpoints and exact resume, in-loop sharpness, random walk, diagnostics."""

from __future__ import annotations

import numpy as np
import pytest

from three_regimes_jax import Config, load_results, run_sweep
from three_regimes_jax.cli import main
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import available_epochs, load_checkpoint
from three_regimes_jax.studies import run as run_mod
from three_regimes_jax.studies.connectivity import load_endpoint

CFG = Config.from_flat(
    dataset="digits",
    elrs=(1e-3, 3e-2, 1.0),
    epochs=5,
    batch_size=64,
    hidden=(32, 16),
    use_data_size=256,
    checkpoint_every=2,
    sharpness_every=2,
    sharpness_size=128,
    sharpness_probes=2,
    sharpness_iters=5,
)


@pytest.fixture(scope="module", autouse=True)
def one_trainer_per_model():
    """The runs of this module with the same model share its compiled trainer.

    A ``GridTrainer`` holds only jitted pure functions, so sharing it changes no
    number; it spares each ``run_sweep`` of ``CFG`` (reference, killed, resumed)
    from tracing the trainer and its sharpness measures again.  Fresh processes
    (and fresh compilations) are the slow SIGKILL test's.
    """
    from three_regimes_jax.studies import sweep

    real, trainers = sweep.make_trainer, {}

    def shared(config, num_classes, input_shape):
        t = config.train
        key = (config.model, t.batch_size, t.drop_last, t.random_walk, config.run)
        key += (num_classes, tuple(input_shape))
        if key not in trainers:
            trainers[key] = real(config, num_classes, input_shape)
        return trainers[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sweep, "make_trainer", shared)
        yield trainers


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    return out, run_sweep(CFG, out=out, progress=False)


def test_checkpoints_and_sharpness_recorded(full_run):
    out, res = full_run
    assert available_epochs(out) == [0, 2, 4, 5]
    m = res.metrics
    assert m["sharpness_epoch"].tolist() == [0, 2, 4, 5]  # the init, every 2nd, the last
    for k in ("grad_cov_trace", "fim_trace", "hessian_trace", "hessian_top_eig", "fim_top_eig"):
        assert m[k].shape == (3, 4) and np.isfinite(m[k]).all(), k
    assert (m["fim_top_eig"] > 0).all() and (m["grad_cov_trace"] > 0).all()
    # the traces also per SI parameter: kernels 64x32 and 32x16 of the 8x8-input MLP
    n_si = 64 * 32 + 32 * 16
    for k in ("grad_cov_trace", "fim_trace", "hessian_trace"):
        np.testing.assert_allclose(m[f"{k}_per_param"] * n_si, m[k], rtol=1e-6)
    for k in ("adjacent_cos", "step_cos", "group_ess_spread"):
        assert m[k].shape == (3, 6) and np.isnan(m[k][:, 0]).all(), k
    # small steps at low ELR: consecutive weights nearly parallel; high ELR decorrelates
    assert (m["adjacent_cos"][0, 1:] > 0.99).all() and m["adjacent_cos"][2, -1] < 0.9
    assert res.summary["members"][0]["hessian_top_eig"] == pytest.approx(
        float(m["hessian_top_eig"][0, -1])
    )


def test_checkpoint_holds_the_grid(full_run):
    out, res = full_run
    state, meta = load_checkpoint(out, 5, template=res.state)
    assert meta["elr"] == [1e-3, 3e-2, 1.0] and meta["epoch"] == 5
    np.testing.assert_array_equal(np.asarray(state.step), np.asarray(res.state.step))
    for a, b in zip(
        np.asarray(state.params["SIDense_0"]["kernel"]),
        np.asarray(res.state.params["SIDense_0"]["kernel"]),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_resume_after_kill_is_byte_identical(
    full_run, tmp_path, monkeypatch, one_trainer_per_model
):
    """Die after training epoch 4 but before its checkpoint; resume redoes 3-4 from 2."""
    ref_out, _ = full_run
    out = tmp_path / "killed"
    real_save = run_mod._save

    def dying_save(ckpt, epoch, state, history, extra):
        if epoch == 4:
            raise KeyboardInterrupt
        real_save(ckpt, epoch, state, history, extra)

    monkeypatch.setattr(run_mod, "_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CFG, out=out, progress=False)
    monkeypatch.undo()
    assert available_epochs(out) == [0, 2] and not (out / "metrics.npz").exists()
    res = run_sweep(CFG, out=out, resume=True, progress=False)
    assert res.summary["resumed_from_epoch"] == 2
    assert one_trainer_per_model, "run_sweep no longer builds its trainer with make_trainer"
    assert (out / "metrics.npz").read_bytes() == (ref_out / "metrics.npz").read_bytes()


def test_interrupted_run_needs_resume_or_overwrite(full_run, tmp_path, capsys):
    ref_out, _ = full_run
    out = tmp_path / "partial"
    (out / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(ref_out / "checkpoints" / "0", out / "checkpoints" / "0")
    argv = ["sweep", "--dataset", "digits", "--elrs", "1e-3", "--epochs", "1", "--out", str(out)]
    assert main(argv) == 2
    assert "interrupted run" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "another config" in err and "elrs" in err


def test_resume_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        run_sweep(CFG, out=tmp_path / "none", resume=True, progress=False)
    with pytest.raises(UserError, match="outside the run's epochs"):
        CFG.replace(checkpoint_epochs=(9,))


def test_random_walk_keeps_sphere_and_loses_the_signal(full_run, tmp_path, monkeypatch):
    """``sweep --random-walk`` from the CLI, into a relative --out with a checkpoint.

    Relative paths matter: Orbax itself only takes absolute ones.  (Every flag
    reaching its field: tests/test_config.py, and the slow test below.)
    """
    _, res = full_run
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--dataset", "digits", "--use-data-size", "256", "--hidden", "32,16"]
    argv += ["--batch-size", "64", "--elrs", "1e-3,3e-2,1", "--epochs", "5", "--random-walk"]
    argv += ["--checkpoint-epochs", "1", "--quiet", "--out", "rw"]
    assert main(argv) == 0
    loaded = load_results("rw")
    cfg = loaded.config
    assert cfg["train"]["random_walk"] is True and cfg["checkpoint"]["epochs"] == [1]
    assert available_epochs("rw") == [0, 1, 5]
    a = load_endpoint("rw:1@3e-2")
    assert a.elr == [3e-2] and a.seed == [0]
    rw = loaded.metrics
    si = rw["si_norm"]
    np.testing.assert_allclose(si, np.broadcast_to(si[:, :1], si.shape), rtol=1e-5)
    # random directions do not learn: worse than the real run at the same ELR
    assert (rw["train_loss"][:2, -1] > res.metrics["train_loss"][:2, -1]).all()
    assert rw["test_acc"][1, -1] < 0.5


@pytest.mark.slow
def test_cli_flags_reach_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = "cli"  # relative: Orbax itself only takes absolute paths
    argv = ["sweep", "--dataset", "digits", "--use-data-size", "128", "--hidden", "8,8"]
    argv += ["--elrs", "1e-2", "--epochs", "2", "--checkpoint-epochs", "1", "--quiet"]
    argv += ["--sharpness-every", "2", "--sharpness-size", "64", "--sharpness-probes", "1"]
    argv += ["--sharpness-iters", "3", "--random-walk", "--out", str(out)]
    assert main(argv) == 2  # the subset must hold at least one training batch
    assert main([*argv, "--batch-size", "32"]) == 0
    cfg = load_results(out).config
    assert cfg["checkpoint"]["epochs"] == [1] and cfg["train"]["random_walk"] is True
    assert (cfg["measure"]["sharpness_every"], cfg["measure"]["sharpness_size"]) == (2, 64)
    assert available_epochs(out) == [0, 1, 2]
    assert main(["interpolate", "--a", "cli:1", "--b", "cli:2", "--out", "lc.npz", "--quiet"]) == 0


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_byte_identical(tmp_path):
    """A real kill -9 of the CLI while it trains; --resume finishes the same run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    argv = ["sweep", "--dataset", "digits", "--use-data-size", "128", "--hidden", "8"]
    argv += ["--batch-size", "32", "--elrs", "1e-3,1e-1", "--epochs", "40"]
    argv += ["--checkpoint-every", "1", "--quiet"]
    ref = tmp_path / "ref"
    assert main([*argv, "--out", str(ref)]) == 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "three_regimes_jax.cli", *argv, "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "3").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = available_epochs(out)
    assert 3 <= done[-1] < 40 and not (out / "metrics.npz").exists()
    assert main([*argv, "--out", str(out), "--resume"]) == 0
    assert (out / "metrics.npz").read_bytes() == (ref / "metrics.npz").read_bytes()
