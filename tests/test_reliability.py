"""Never lose a result: ownership, locking, integrity, faults, and the fuzz set.

Each test here failed on the code before issue 11: a command overwrote or
deleted what it did not write, restored corrupt data, crashed with a
traceback, or left a directory only ``--overwrite`` could recover.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tests import fuzz
from three_regimes_jax.cli import main
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage import files
from three_regimes_jax.storage.outdir import LOCK_FILE, OWNER_FILE, check_out_file, claim
from three_regimes_jax.storage.results import load_results
from three_regimes_jax.studies.connectivity import _is_interpolate_file

TINY = fuzz.TINY
SWEEP = ["sweep", *TINY, "--elrs", "1e-3,1e-1", "--epochs", "2", "--quiet"]
CKPT = [*fuzz.SOURCE_ARGS, "--quiet"]  # the fuzz fixture's source run


def _run(argv, capfd) -> tuple[int, list[str]]:
    rc = main([str(a) for a in argv])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    return rc, err


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    """The fuzz set's sandbox: a checkpointed sweep ``src``, a toy run, a foreign dir."""
    return fuzz.make_fixture(tmp_path_factory.mktemp("fuzz") / "fixture", main)


@pytest.fixture(scope="module")
def reference(fixture_dir):
    """An uninterrupted checkpointed run of CKPT: its directory."""
    return fixture_dir / "src"


# --------------------------------------------------------------------------- nothing is lost


def test_toy_refuses_a_sweep_directory_and_sweep_refuses_a_toy(fixture_dir, tmp_path, capfd):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    before = (box / "src" / "summary.json").read_bytes()
    rc, err = _run([*fuzz.TOY_ARGS, "--out", box / "src"], capfd)
    assert rc == 2 and len(err) == 1 and "holds a sweep's results" in err[0]
    assert (box / "src" / "summary.json").read_bytes() == before
    rc, err = _run([*SWEEP, "--out", box / "toy"], capfd)
    assert rc == 2 and "holds a toy run" in err[0]


def test_interpolate_never_replaces_another_commands_file(fixture_dir, tmp_path, capfd):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    metrics = box / "src" / "metrics.npz"
    before = metrics.read_bytes()
    argv = ["interpolate", "--a", box / "src", "--points", "2", "--quiet", "--out", metrics]
    rc, err = _run(argv, capfd)
    assert rc == 2 and "exists" in err[0]
    rc, err = _run([*argv, "--overwrite"], capfd)
    assert rc == 2 and "was not written by this command" in err[0]
    assert metrics.read_bytes() == before
    # An interpolate file is replaced with --overwrite; a missing directory is created.
    lc = tmp_path / "new" / "dir" / "lc.npz"
    argv[-1] = lc
    assert _run(argv, capfd)[0] == 0 and lc.is_file()
    assert _run(argv, capfd)[0] == 2
    assert check_out_file(lc, ".npz", overwrite=True, ours=_is_interpolate_file) == lc


def test_finetune_overwrite_never_deletes_its_source(fixture_dir, tmp_path, capfd):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    src = box / "src"
    ckpts = sorted(p.name for p in (src / "checkpoints").iterdir())
    for out in (src, src / "sub", src / "checkpoints"):
        argv = ["finetune", "--from", src, "--elrs", "1e-3", "--epochs", "1", "--quiet"]
        rc, err = _run([*argv, "--out", out, "--overwrite"], capfd)
        assert rc == 2 and "overlaps" in err[0], err
    assert sorted(p.name for p in (src / "checkpoints").iterdir()) == ckpts
    assert not (src / "sub").exists()


@pytest.mark.parametrize("out", ["", "  "])
def test_blank_out_is_an_error(out, tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in ([*SWEEP, "--out", out], [*fuzz.TOY_ARGS, "--out", out]):
        rc, err = _run(argv, capfd)
        assert rc == 2 and "--out is empty" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_foreign_files_are_never_replaced_even_with_overwrite(tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.npz").write_text("the user's own file")
    rc, err = _run([*SWEEP, "--out", out, "--overwrite"], capfd)
    assert rc == 2 and "three-regimes did not write" in err[0]
    assert (out / "metrics.npz").read_text() == "the user's own file"


# --------------------------------------------------------------------------- integrity


def test_results_carry_checksums_and_damage_is_one_line(fixture_dir, tmp_path, capfd):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    src = box / "src"
    manifest = (src / "MANIFEST.sha256").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in manifest) == ["metrics.npz", "summary.json"]
    for damage in (fuzz._flip, fuzz._truncate, fuzz._empty):
        shutil.copy(fixture_dir / "src" / "metrics.npz", src / "metrics.npz")
        damage(src / "metrics.npz")
        with pytest.raises(UserError, match="corrupt .metrics.npz changed after it was written"):
            load_results(src)
        rc, err = _run(["plot", src, "--kind", "overview", "--quiet"], capfd)
        assert rc == 2 and len(err) == 1 and "corrupt" in err[0]


def test_checkpoint_bit_flip_is_an_error_not_a_nan_member(fixture_dir, tmp_path, capfd):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    fuzz._CKPT_CORRUPTIONS["ckpt-data-flipped"](box)
    argv = ["finetune", "--from", box / "src", "--elrs", "1e-3", "--epochs", "1", "--quiet"]
    rc, err = _run([*argv, "--out", tmp_path / "ft"], capfd)
    assert rc == 2 and len(err) == 1
    assert "checkpoint at epoch 2" in err[0] and "SHA-256 does not match" in err[0]
    assert "<bound method" not in err[0] and not (tmp_path / "ft").exists()


def test_results_arrays_are_validated_against_the_config(fixture_dir, tmp_path):
    box = tmp_path / "b"
    shutil.copytree(fixture_dir, box)
    fuzz._bad_shape(box)
    with pytest.raises(UserError, match="array train_loss has shape"):
        load_results(box / "src")
    shutil.rmtree(box)
    shutil.copytree(fixture_dir, box)
    fuzz._drop_array("epoch")(box)
    with pytest.raises(UserError, match="lacks the array.s. epoch"):
        load_results(box / "src")


# --------------------------------------------------------------------------- one writer


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path, capfd):
    out = tmp_path / "run"
    holder = textwrap.dedent(
        f"""
        import sys, time
        from three_regimes_jax.storage.outdir import claim
        with claim({str(out)!r}, command="sweep", config=None):
            print("locked", flush=True)
            time.sleep(60)
        """
    )
    p = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        rc, err = _run([*SWEEP, "--out", out], capfd)
        assert rc == 2 and len(err) == 1 and f"being written by process {p.pid}" in err[0]
        assert time.perf_counter() - t0 < 5
        rc, err = _run(["regimes", out], capfd)
        assert rc == 2 and f"process {p.pid}" in err[0]
    finally:
        p.kill()
        p.wait()
    # The kernel dropped the dead process's lock: the stale lock file is taken over.
    assert (out / LOCK_FILE).exists()
    with claim(out, command="sweep", config=None):
        pass
    assert not (out / LOCK_FILE).exists()


@pytest.mark.slow  # two fresh processes; the fast twin is the test above
def test_two_concurrent_sweeps_exactly_one_wins(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "three_regimes_jax.cli", *SWEEP, "--out", str(out)]
    procs = [
        subprocess.Popen([*cmd, "--seeds", s], stderr=subprocess.PIPE, text=True, env=env)
        for s in ("0", "1")
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert len(loser.strip().splitlines()) == 1
    assert "being written by" in loser or "different run" in loser  # pid: if written yet
    winner = 0 if results[0][0] == 0 else 1
    assert set(load_results(out).metrics["seed"].tolist()) == {winner}


# --------------------------------------------------------------------------- faults


def test_kill_during_first_checkpoint_is_recoverable_without_overwrite(tmp_path, capfd, reference):
    # What a kill leaves at each moment of the first save: the claimed directory
    # alone, Orbax's temporary directory, a step without its manifest.
    for moment in ("claimed", "orbax-tmp", "no-manifest"):
        out = tmp_path / moment
        with pytest.raises(KeyboardInterrupt):
            with claim(out, command="sweep", config=None):
                raise KeyboardInterrupt
        assert not out.exists()  # nothing kept: the claimed directory went away
        shutil.copytree(reference, out)
        for f in ("config.json", "metrics.npz", "summary.json", "MANIFEST.sha256"):
            (out / f).unlink()
        ck = out / "checkpoints"
        for e in ("1", "2", "history.npz"):
            shutil.rmtree(ck / e) if (ck / e).is_dir() else (ck / e).unlink()
        if moment == "claimed":
            shutil.rmtree(ck)
        elif moment == "orbax-tmp":
            (ck / "0").rename(ck / "0.orbax-checkpoint-tmp-1700000000")
        else:
            (ck / "0" / "MANIFEST.sha256").unlink()
        flags = ["--resume"] if moment == "no-manifest" else []
        rc, err = _run([*CKPT, "--out", out, *flags], capfd)
        assert rc == 0, err
        m = load_results(out).metrics
        np.testing.assert_array_equal(
            m["train_loss"], load_results(reference).metrics["train_loss"]
        )
        assert not list(out.glob("**/*orbax-checkpoint-tmp*"))


def _fill(directory: Path, leave: int) -> None:
    """Fills the file system of ``directory`` but ``leave`` bytes."""
    st = os.statvfs(directory)
    free = st.f_bavail * st.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    return r.returncode == 0


def test_full_disk_is_one_line_and_keeps_only_what_resume_can_use(tmp_path, capfd, monkeypatch):
    disk = tmp_path / "disk"
    if _tmpfs(disk, "4m"):
        try:
            outcomes = set()
            for leave in (2_000, 200_000):
                out = disk / f"run{leave}"
                _fill(disk, leave)
                rc, err = _run([*CKPT, "--out", out], capfd)
                (disk / "filler").unlink()
                assert rc in (0, 2) and len(err) <= 1, err
                if rc == 2:
                    assert "no space left" in err[0], err
                    assert not (out / "metrics.npz").exists() and not (out / "config.json").exists()
                    if out.exists():  # only resumable checkpoints are kept
                        assert "kept checkpoints" in err[0]
                        assert _run([*CKPT, "--out", out, "--resume"], capfd)[0] == 0
                outcomes.add(rc)
                shutil.rmtree(out, ignore_errors=True)
            assert 2 in outcomes
        finally:
            subprocess.run(["umount", "-l", str(disk)])
        return

    # No tmpfs: every atomic write runs out of space.
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "metrics.npz")

    monkeypatch.setattr(files, "atomic_write", full)
    monkeypatch.setattr("three_regimes_jax.storage.results.write_npz", full)
    rc, err = _run([*SWEEP, "--out", disk / "run"], capfd)
    assert rc == 2 and len(err) == 1 and "no space left" in err[0]
    assert not (disk / "run").exists()


def test_ctrl_c_says_what_was_kept(tmp_path, capfd, monkeypatch):
    import three_regimes_jax.studies.run as run_mod

    real = run_mod.train_grid

    def interrupted(*a, on_epoch, **k):
        def stop(epoch, *rest):
            on_epoch(epoch, *rest)
            raise KeyboardInterrupt

        return real(*a, on_epoch=stop, **k)

    monkeypatch.setattr(run_mod, "train_grid", interrupted)
    out = tmp_path / "run"
    rc, err = _run([*CKPT, "--out", out], capfd)
    assert rc == 130 and len(err) == 1
    assert f"kept checkpoints at epochs 0, 1 in {out} (continue with --resume)" in err[0]
    rc, err = _run([*SWEEP, "--out", tmp_path / "plain"], capfd)
    assert rc == 130 and err == ["three-regimes: interrupted; nothing was written"]
    assert not (tmp_path / "plain").exists()
    monkeypatch.setattr(run_mod, "train_grid", real)
    assert _run([*CKPT, "--out", out, "--resume"], capfd)[0] == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [OWNER_FILE]


def test_unexpected_error_is_one_line_with_a_log(tmp_path, capfd, monkeypatch):
    import three_regimes_jax.studies.run as run_mod

    def boom(*a, **k):
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(run_mod, "train_grid", boom)
    rc, err = _run([*SWEEP, "--out", tmp_path / "run"], capfd)
    assert rc == 1 and len(err) == 1 and "Traceback" not in err[0]
    log = Path(err[0].split("the traceback is in ")[1].split(" (please")[0])
    assert "RuntimeError: something nobody expected" in log.read_text()
    assert "Traceback" in log.read_text()
    log.unlink()
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "-1"], "--seeds must be >= 0"),
        (["--elrs", "1e-50"], "below float32's smallest normal"),
        (["--init-scale", "nan"], "--init-scale"),
        (["--noise-seed", "-1"], "--noise-seed must be >= 0"),
        (["--use-data-size", "0"], "--use-data-size"),
    ],
)
def test_bad_values_name_the_flag(argv, message, tmp_path, capfd):
    rc, err = _run([*SWEEP, *argv, "--out", tmp_path / "r"], capfd)
    assert rc == 2 and len(err) == 1 and message in err[0], err


def test_regimes_random_walk_must_be_the_runs_random_walk(fixture_dir, capfd):
    src = fixture_dir / "src"
    rc, err = _run(["regimes", src, "--random-walk", src, "--quiet"], capfd)
    assert rc == 2 and "is not a random-walk run" in err[0]


def test_duplicates_refused_everywhere(fixture_dir, tmp_path, capfd):
    argv = ["finetune", "--from", fixture_dir / "src", "--elrs", "1e-3,1e-3", "--epochs", "1"]
    assert _run([*argv, "--out", tmp_path / "f"], capfd)[0] == 2
    toy = ["toy", "--alphas", "1", "--elrs", "0.1,0.1", "--out", tmp_path / "t"]
    rc, err = _run(toy, capfd)
    assert rc == 2 and "--elrs must not repeat" in err[0]


# --------------------------------------------------------------------------- the fuzz set


def _check_sample(cases, fixture_dir, tmp_path):
    bad = []
    for c in cases:
        o = fuzz.run_case(c, fixture_dir, tmp_path / "box", fuzz.in_process)
        if not o.clean or o.changed or o.leftover:
            bad.append((o.case, o.rc, o.changed[:3], o.stderr[-300:]))
    fuzz._make_writable(tmp_path)
    assert bad == []


def test_fuzz_sample(fixture_dir, tmp_path):
    """A seeded sample of the fuzz set, in-process: exit 2, one line, nothing touched."""
    all_cases = fuzz.cases()
    assert len(all_cases) > 150
    _check_sample(random.Random(11).sample(all_cases, 30), fixture_dir, tmp_path)


@pytest.mark.slow
def test_fuzz_everything(fixture_dir, tmp_path):
    """The whole set in-process, and a sample in fresh processes (stray output at exit)."""
    _check_sample(fuzz.cases(), fixture_dir, tmp_path)
    bad = []
    for c in random.Random(3).sample(fuzz.cases(), 25):
        o = fuzz.run_case(c, fixture_dir, tmp_path / "sub", fuzz.in_subprocess)
        if not o.clean or o.changed or o.leftover:
            bad.append((o.case, o.rc, o.changed[:3], o.stderr[-300:]))
    fuzz._make_writable(tmp_path)
    assert bad == []


@pytest.mark.slow
def test_kill_9_at_any_moment_is_recoverable(reference, tmp_path):
    """SIGKILL a checkpointing sweep at many moments; the same command finishes it.

    The command is rerun with ``--resume`` and, where there is nothing to
    resume (killed before anything was kept), without it; the results must
    equal an uninterrupted run's and no temporary file may remain.
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    base = [sys.executable, "-m", "three_regimes_jax.cli", *CKPT]
    ref = load_results(reference).metrics
    for k, delay in enumerate((0.3, 1.0, 1.6, 2.2, 2.8, 3.4, 4.0, 4.6)):
        out = tmp_path / f"k{k}"
        p = subprocess.Popen([*base, "--out", str(out)], env=env, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.kill()
        p.wait()
        r = subprocess.run([*base, "--out", str(out), "--resume"], env=env, capture_output=True)
        if r.returncode == 2 and b"nothing to resume" in r.stderr:
            r = subprocess.run([*base, "--out", str(out)], env=env, capture_output=True)
        assert r.returncode == 0, (delay, r.stderr.decode()[-500:])
        np.testing.assert_array_equal(load_results(out).metrics["train_loss"], ref["train_loss"])
        assert not [p for p in out.rglob("*") if p.name.endswith(".tmp") or "tmp-" in p.name]


def test_a_lost_lock_race_never_removes_the_winners_directory(tmp_path):
    """Two writers create ``out`` at once; the loser removes only what is still empty."""
    from three_regimes_jax.storage.outdir import _remove_empty

    top = tmp_path / "a"
    out = top / "b" / "run"
    out.mkdir(parents=True)
    (out / LOCK_FILE).write_text("123\n")  # the winner's lock, taken in between
    _remove_empty(out, top)
    assert (out / LOCK_FILE).exists()
    (out / LOCK_FILE).unlink()
    _remove_empty(out, top)  # nobody else's: the loser's own empty directories go
    assert not top.exists() and tmp_path.exists()
