"""Fine-tuning grids of grids and linear connectivity between checkpoints."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from three_regimes_jax import Config, load_results, run_sweep
from three_regimes_jax.cli import main
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.checkpoint import available_epochs, read_meta
from three_regimes_jax.studies.connectivity import (
    barrier,
    load_endpoint,
    pair_indices,
    parse_endpoint,
)
from three_regimes_jax.studies.finetune import finetune_config, run_finetune

SRC = Config.from_flat(
    dataset="digits",
    elrs=(1e-3, 3e-3, 1e-2),
    seeds=(0, 1),
    epochs=4,
    batch_size=64,
    hidden=(32, 16),
    use_data_size=256,
    checkpoint_every=2,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    out = tmp_path_factory.mktemp("src") / "sweep"
    run_sweep(SRC, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def finetuned(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "ft"
    cfg = finetune_config(source, epoch=2, members=(3e-3,), elrs=(1e-3, 3e-3), epochs=2)
    return out, run_finetune(cfg, out=out, progress=False)


def test_finetune_grid_layout_and_epochs(finetuned):
    out, res = finetuned
    m = load_results(out).metrics
    assert m["source_elr"].tolist() == pytest.approx([3e-3] * 4)
    assert m["elr"].tolist() == pytest.approx([1e-3, 3e-3, 1e-3, 3e-3])
    assert m["seed"].tolist() == [0, 0, 1, 1]
    assert m["source_epoch"].tolist() == [2] * 4 and m["epoch"].tolist() == [2, 3, 4]
    assert available_epochs(out) == [2, 4]
    meta = read_meta(out, 4)
    assert (
        meta["source_elr"] == pytest.approx([3e-3] * 4)
        and meta["config"]["model"]["name"] == "mlp_si"
    )
    assert res.config["kind"] == "finetune"
    # the source's sphere radius is kept
    src_radius = np.asarray(res.state.opt_state.radius)
    np.testing.assert_allclose(m["si_norm"][:, -1], src_radius, rtol=1e-5)


def test_finetune_at_the_same_elr_continues_the_source_run(source, finetuned):
    _, res = finetuned
    src = load_results(source).metrics
    # members (seed 0, elr 3e-3) and (seed 1, elr 3e-3) are source members 2 and 3
    for ft_i, src_i in ((1, 2), (3, 3)):
        np.testing.assert_allclose(
            res.metrics["train_loss"][ft_i], src["train_loss"][src_i, 2:], rtol=1e-5
        )


def test_new_data_key_changes_the_order(source, finetuned):
    """The fine-tune of ``finetuned`` again, with fresh data keys: other batch orders."""
    _, same = finetuned
    cfg = finetune_config(
        source, epoch=2, members=(3e-3,), elrs=(1e-3, 3e-3), epochs=2, data_key="new"
    )
    new = run_finetune(cfg, progress=False).metrics["train_loss"]
    assert new.shape == same.metrics["train_loss"].shape
    for i in range(len(new)):
        assert not np.allclose(new[i], same.metrics["train_loss"][i])


def test_finetune_errors(source, tmp_path, capsys):
    with pytest.raises(UserError, match="no member with ELR 0.5 .* it has: 0.001, 0.003, 0.01"):
        cfg = finetune_config(source, epoch=2, elrs=(1e-3,), epochs=1, members=(0.5,))
        run_finetune(cfg, progress=False)
    with pytest.raises(UserError, match="no checkpoint for epoch 3"):
        finetune_config(source, epoch=3, elrs=(1e-3,), epochs=1)
    with pytest.raises(UserError, match="overlaps .* which this run reads"):
        run_finetune(finetune_config(source, elrs=(1e-3,), epochs=1), out=source, overwrite=True)
    assert available_epochs(source) == [0, 2, 4]
    argv = ["finetune", "--from", str(tmp_path), "--elrs", "1e-3", "--epochs", "1"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert main([*argv, "--from-init", "--epoch", "2", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_endpoints_reproduce_the_models_own_train_loss(source, tmp_path):
    out = tmp_path / "nb.npz"
    assert main(["interpolate", "--a", f"{source}:4", "--out", str(out), "--points", "3"]) == 0
    z = np.load(out)
    src = load_results(source).metrics
    # neighbours per seed, sorted by ELR: (0,2), (2,4) for seed 0 and (1,3), (3,5) for seed 1
    assert z["a_elr"].tolist() == pytest.approx([1e-3, 3e-3, 1e-3, 3e-3])
    assert z["b_elr"].tolist() == pytest.approx([3e-3, 1e-2, 3e-3, 1e-2])
    ends = {0: (0, 2), 1: (2, 4), 2: (1, 3), 3: (3, 5)}
    for k, (i, j) in ends.items():
        np.testing.assert_allclose(z["train_loss"][k, 0], src["train_loss"][i, -1], rtol=1e-5)
        np.testing.assert_allclose(z["train_loss"][k, -1], src["train_loss"][j, -1], rtol=1e-5)
        np.testing.assert_allclose(z["test_acc"][k, 0], src["test_acc"][i, -1], rtol=1e-5)
    assert z["alpha"].tolist() == [0, 0.5, 1]
    assert z["barrier"].shape == (4,) and (z["barrier"] >= -1e-6).all()


def test_pretrained_vs_finetuned_and_recompute_bn(source, finetuned, tmp_path):
    ft_dir, _ = finetuned
    out = tmp_path / "pf.npz"
    argv = ["interpolate", "--a", f"{source}:2@3e-3", "--b", str(ft_dir), "--points", "3"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    plain = np.load(out)
    assert plain["b_source_elr"].tolist() == pytest.approx([3e-3] * 4)
    assert main([*argv, "--recompute-bn", "--out", str(out), "--quiet", "--overwrite"]) == 0
    rec = np.load(out)
    np.testing.assert_allclose(rec["train_loss"], plain["train_loss"], rtol=1e-6)
    assert not np.allclose(rec["test_loss"], plain["test_loss"])


def test_pairing_rules_and_specs(source):
    assert parse_endpoint("runs/x:12@1e-3") == ("runs/x", 12, 1e-3)
    assert parse_endpoint("runs/x") == ("runs/x", None, None)
    with pytest.raises(UserError, match="bad ELR"):
        parse_endpoint("runs/x@abc")
    a = load_endpoint(f"{source}:4")  # 6 members: ELR-major, seeds 0, 1
    assert pair_indices(a, a, "neighbors") == [(0, 2), (2, 4), (1, 3), (3, 5)]
    assert len(pair_indices(a, a, "all")) == 6  # 3 pairs of ELRs, per seed
    early = load_endpoint(f"{source}:2")
    assert pair_indices(early, a, "neighbors") == [(i, i) for i in range(6)]
    one_elr = load_endpoint(f"{source}:2@1e-2")  # seeds 0 and 1
    assert pair_indices(one_elr, a, "neighbors") == [(0, 0), (1, 1), (0, 2), (1, 3), (0, 4), (1, 5)]
    with pytest.raises(UserError, match="--pairs must be"):
        pair_indices(a, a, "x")
    two_seeds_two_elrs = load_endpoint(f"{source}:4@1e-3")
    two_seeds_two_elrs = two_seeds_two_elrs.__class__(
        **{**two_seeds_two_elrs.__dict__, "seed": [0, 0], "elr": [1e-3, 2e-3]}
    )
    with pytest.raises(UserError, match="select members"):
        pair_indices(two_seeds_two_elrs, a, "neighbors")


def test_barrier_of_convex_and_nonconvex_curves():
    alphas = np.linspace(0, 1, 11)
    convex = np.stack([(alphas - 0.3) ** 2, np.exp(alphas), 1 + 0 * alphas])
    assert (barrier(convex, alphas) <= 1e-12).all()
    bump = np.sin(np.pi * alphas)[None]
    assert barrier(bump, alphas)[0] == pytest.approx(1.0)


def test_only_members_with_the_same_head_are_interpolated(source, tmp_path):
    a = load_endpoint(f"{source}:4@1e-3")  # two members: seed 0 and 1, one shared head
    from three_regimes_jax.engine.grid import member, stack
    from three_regimes_jax.engine.loop import DeviceData
    from three_regimes_jax.studies.connectivity import linear_path
    from three_regimes_jax.studies.run import load_data, make_trainer

    ds = load_data(SRC)
    trainer = make_trainer(SRC, ds.num_classes, ds.image_shape)
    s0, s1 = stack([member(a.state, 0)]), stack([member(a.state, 1)])
    data = DeviceData.from_dataset(ds)
    np.testing.assert_array_equal(
        jax.tree.leaves(s0.frozen)[0], jax.tree.leaves(s1.frozen)[0]
    )  # seeds share seed 0's head by default (official code's same_last_layer)
    res = linear_path(trainer, s0, s1, np.array([0.0, 1.0]), data)
    assert np.isfinite(res["train_loss"]).all()
    other_head = s1.replace(frozen=jax.tree.map(lambda f: 2 * f, s1.frozen))  # --per-seed-head
    with pytest.raises(UserError, match="same seed"):
        linear_path(trainer, s0, other_head, np.array([0.0, 1.0]), data)
