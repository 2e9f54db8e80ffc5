"""Sharded sweeps (--shard K/N) and merge: the merged directory is the unsharded run."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from three_regimes_jax import Config, load_results, run_sweep
from three_regimes_jax.cli import main
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import complete_epochs, load_checkpoint, read_meta
from three_regimes_jax.studies.merge import merge_shards, merged_results
from three_regimes_jax.studies.run import state_template

CFG = Config.from_flat(
    dataset="digits",
    elrs=(1e-3, 1e-1),
    seeds=(0, 1),
    epochs=2,
    batch_size=64,
    hidden=(32, 16),
    use_data_size=200,
    use_test_size=100,
    checkpoint_every=2,
    strategy="map",
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The unsharded run and its two shards (members 0-1 and 2-3)."""
    root = tmp_path_factory.mktemp("shards")
    full = run_sweep(CFG, out=root / "full", progress=False)
    for k in range(2):
        run_sweep(CFG.replace(shard=f"{k}/2"), out=root / f"s{k}", progress=False)
    return root, full


def test_shard_ranges_are_contiguous_blocks_covering_the_grid():
    g = CFG.grid_size
    ranges = [CFG.replace(shard=f"{k}/3").shard_range for k in range(3)]
    assert ranges == [(0, 1), (1, 2), (2, 4)] and g == 4
    members = [m for k in range(3) for m in CFG.replace(shard=f"{k}/3").member_hypers]
    assert members == CFG.member_hypers
    assert CFG.replace(shard="1/3").member_seeds == [1]


@pytest.mark.parametrize(
    "shard,match",
    [
        ("2/2", "0 <= K < N"),
        ("a/b", "K/N"),
        ("1", "K/N"),
        ("0/5", "the grid has 4 member"),
    ],
)
def test_bad_shard_values_are_one_line(shard, match):
    with pytest.raises(UserError, match=match):
        CFG.replace(shard=shard)


def test_merged_shards_equal_the_unsharded_run_bit_for_bit(runs, tmp_path):
    root, full = runs
    out = tmp_path / "merged"
    assert main(["merge", str(root / "s1"), str(root / "s0"), "--out", str(out), "--quiet"]) == 0
    merged = load_results(out)
    assert merged.config == load_results(root / "full").config
    assert set(merged.metrics) == set(full.metrics)
    for k, v in full.metrics.items():
        np.testing.assert_array_equal(merged.metrics[k], v, err_msg=k)
    assert [m["elr"] for m in merged.summary["members"]] == CFG.member_elrs
    assert [s["shard"] for s in merged.summary["shards"]] == ["0/2", "1/2"]
    # the checkpoints restore, and equal the unsharded run's
    assert complete_epochs(out) == complete_epochs(root / "full") == [0, 2]
    meta = read_meta(out, 2)
    a, _ = load_checkpoint(out, 2, template=state_template(meta))
    b, _ = load_checkpoint(root / "full", 2, template=state_template(meta))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert meta["seed"] == CFG.member_seeds and meta["members"] == 4
    # in memory, from the shard list, without writing
    inline = merged_results([root / "s0", root / "s1"])
    np.testing.assert_array_equal(inline.metrics["test_loss"], full.metrics["test_loss"])


def test_merge_refuses_shards_that_do_not_belong_together(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "m"
    with pytest.raises(UserError, match=r"shard\(s\) 1/2 missing"):
        merge_shards([root / "s0"], out)
    with pytest.raises(UserError, match="given twice"):
        merge_shards([root / "s0", root / "s0"], out)
    with pytest.raises(UserError, match="is not a shard"):
        merge_shards([root / "full", root / "s0"], out)
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((root / "s1" / "config.json").read_text())
    cfg["run"]["precision"] = "default"
    # a shard of another run: copy s1 with a changed config (its manifest still verifies data)
    for f in (root / "s1").iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="shards of different runs: they differ in --precision"):
        merge_shards([root / "s0", other], out)
    assert not out.exists()
    assert main(["merge", str(root / "s0"), "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err and not out.exists()


def test_slurm_scripts_parse_and_build_a_valid_shard_command(tmp_path):
    """``bash -n`` passes; array task 2 of 4 builds a sweep command our CLI parses."""
    import shlex
    import subprocess
    from pathlib import Path

    from three_regimes_jax.cli import build_parser

    slurm = Path(__file__).resolve().parents[1] / "experiments" / "slurm"
    for script in ("sweep_array.sh", "merge.sh"):
        assert subprocess.run(["bash", "-n", str(slurm / script)]).returncode == 0
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1"}
    env |= {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    flags = ["--dataset", "digits", "--elrs", "1e-3,1e-2,1e-1,1", "--epochs", "3"]
    out = subprocess.run(
        ["bash", str(slurm / "sweep_array.sh"), str(tmp_path), "--", *flags],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    argv = shlex.split(out)
    assert argv[:2] == ["three-regimes", "sweep"]
    args = build_parser().parse_args(argv[1:])
    assert args.shard == "2/4" and args.out == f"{tmp_path}/shard_2" and args.epochs == 3
    for k in (0, 3):
        (tmp_path / f"shard_{k}").mkdir()
    out = subprocess.run(
        ["bash", str(slurm / "merge.sh"), str(tmp_path)],
        env={"PATH": "/usr/bin:/bin", "DRY_RUN": "1"}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    args = build_parser().parse_args(shlex.split(out)[1:])
    assert args.dirs == [f"{tmp_path}/shard_0", f"{tmp_path}/shard_3"]
    assert args.out == f"{tmp_path}/merged"
    bad = subprocess.run(["bash", str(slurm / "sweep_array.sh"), str(tmp_path)], env=env)
    assert bad.returncode == 2


def test_regimes_and_plot_take_the_shard_directories_of_one_run(runs, tmp_path):
    root, full = runs
    shards = [str(root / "s0"), str(root / "s1")]
    assert main(["regimes", *shards, "--quiet"]) == 2  # where would regimes.json go?
    assert main(["regimes", *shards, "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert main(["regimes", str(root / "full"), "--quiet"]) == 0
    a = json.loads((tmp_path / "r" / "regimes.json").read_text())
    b = json.loads((root / "full" / "regimes.json").read_text())
    assert a == b
    from plotting import run_plot

    files = run_plot(shards, kind="overview", out=tmp_path / "fig")
    assert any(f.suffix == ".png" for f in files)


def test_a_shard_list_source_is_the_merged_runs_checkpoint(runs, tmp_path, capsys):
    """``Source("s1,s0")`` joins the shards' checkpoints into the merged run's, in memory."""
    from three_regimes_jax.storage.sources import Source

    root, _ = runs
    merged = tmp_path / "merged"
    merge_shards([root / "s0", root / "s1"], merged)
    joined = Source(f"{root / 's1'},{root / 's0'}")
    assert joined.epochs() == complete_epochs(merged) and joined.latest() == 2
    a, meta_a = joined.load(2, state_template)
    b, meta_b = load_checkpoint(merged, 2, template=state_template(read_meta(merged, 2)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for key in ("elr", "seed", "step", "members", "config"):
        assert meta_a[key] == meta_b[key], key
    with pytest.raises(UserError, match="one shard"):
        Source(root / "s0")
    with pytest.raises(UserError, match="twice"):
        Source(f"{root / 's0'},{root / 's0'}")


@pytest.mark.slow
def test_finetune_and_interpolate_read_a_merged_run_or_its_shard_list(runs, tmp_path, capsys):
    """The shard list (any order) is the merged run: same fine-tune, same interpolation."""
    root, _ = runs
    merged = tmp_path / "merged"
    merge_shards([root / "s0", root / "s1"], merged)
    shard_list = f"{root / 's1'},{root / 's0'}"
    flags = ["--epoch", "2", "--elrs", "1e-2", "--epochs", "1", "--quiet"]
    for name, src in (("ft_m", str(merged)), ("ft_s", shard_list)):
        assert main(["finetune", "--from", src, *flags, "--out", str(tmp_path / name)]) == 0
    a, b = load_results(tmp_path / "ft_m"), load_results(tmp_path / "ft_s")
    assert len(a.metrics["elr"]) == 4 and a.metrics["epoch"].tolist() == [2, 3]
    for k, v in a.metrics.items():
        np.testing.assert_array_equal(b.metrics[k], v, err_msg=k)
    for name, src in (("i_m", str(merged)), ("i_s", shard_list)):
        argv = ["interpolate", "--a", f"{src}:0", "--b", f"{src}:2", "--points", "3"]
        assert main([*argv, "--out", str(tmp_path / f"{name}.npz"), "--quiet"]) == 0
    a, b = (np.load(tmp_path / f"{n}.npz") for n in ("i_m", "i_s"))
    np.testing.assert_array_equal(a["train_loss"], b["train_loss"])
    capsys.readouterr()
    assert main(["finetune", "--from", str(root / "s0"), *flags, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "one shard" in err and "merge" in err and not (tmp_path / "x").exists()
    assert main(["finetune", "--from", f"{root / 's0'},{root / 's0'}", *flags,
                 "--out", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "twice" in capsys.readouterr().err and not (tmp_path / "x").exists()
