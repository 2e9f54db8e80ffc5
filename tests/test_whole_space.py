"""Whole-space SGD (``--train whole``): PyTorch's SGD, schedules, LR x wd grids, augmentation."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err

from three_regimes_jax.config import Config, TrainConfig
from three_regimes_jax.engine.augment import augment_key, random_crop_flip
from three_regimes_jax.engine.grid import member
from three_regimes_jax.engine.models import build_model, init_model
from three_regimes_jax.engine.optim import lr_schedule, make_optimizer
from three_regimes_jax.engine.trainer import GridTrainer
from three_regimes_jax.errors import UserError

LRS, WDS = (0.05, 0.5), (0.0, 0.2)


def _whole(**kw) -> TrainConfig:
    return TrainConfig(mode="whole", lrs=LRS, batch_size=64, **kw)


@pytest.fixture(scope="module")
def head_mlp():
    """A tiny MLP-SI with a trainable (non-SI) last layer, and its variables."""
    model = build_model("mlp_si", 10, hidden=(16, 8), train_last_layer=True)
    return model, init_model(model, jax.random.key(1), (8, 8, 1))


def test_whole_sgd_matches_optax_sgd_with_decayed_weights_step_for_step(head_mlp):
    _, v = head_mlp
    lr, wd, mu = 0.3, 5e-3, 0.9
    ours = make_optimizer(_whole(momentum=mu, weight_decays=(wd,)), v.si_mask)
    ref = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
    p_ours = p_ref = v.params
    s_ours, s_ref = ours.init(p_ours, lr=lr, weight_decay=wd), ref.init(p_ref)
    keys = jax.random.split(jax.random.key(2), 5)
    for k in keys:  # the same random "gradients" at each step
        g = jax.tree.map(lambda p, kk=k: jax.random.normal(kk, p.shape), v.params)
        u, s_ours = ours.update(g, s_ours, p_ours)
        p_ours = optax.apply_updates(p_ours, u)
        u, s_ref = ref.update(g, s_ref, p_ref)
        p_ref = optax.apply_updates(p_ref, u)
    for a, b in zip(jax.tree.leaves(p_ours), jax.tree.leaves(p_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_noninv_lr_freezes_or_sets_the_non_si_step(head_mlp):
    _, v = head_mlp
    g = jax.tree.map(jnp.ones_like, v.params)
    for noninv, want in ((0.0, 0.0), (-1.0, 0.2), (0.05, 0.05)):
        opt = make_optimizer(_whole(noninv_lr=noninv), v.si_mask)
        u, _ = opt.update(g, opt.init(v.params, lr=0.2, weight_decay=0.0), v.params)
        for m, leaf in zip(jax.tree.leaves(v.si_mask), jax.tree.leaves(u), strict=True):
            np.testing.assert_allclose(leaf, -(0.2 if m else want), rtol=1e-6)


def test_cosine_and_constant_schedules_match_the_closed_form():
    cos = lr_schedule("cosine", 200)
    for e in (0, 1, 50, 100, 199):
        assert float(cos(e)) == pytest.approx((1 + math.cos(math.pi * e / 200)) / 2, abs=1e-6)
    assert float(lr_schedule("constant", 200)(17)) == 1.0
    with pytest.raises(ValueError):
        lr_schedule("step", 10)


def _fit(trainer, tiny, hypers, seeds, epochs=2):
    x, y = tiny[0][:128], tiny[1][:128]
    state = trainer.init(hypers, seeds, (8, 8, 1))
    for e in range(epochs):
        state, m = trainer.train_epoch(state, x, y, e)
    return state, m


@pytest.fixture(scope="module")
def whole_trainers(head_mlp):
    model, v = head_mlp
    train = _whole(momentum=0.9, weight_decays=WDS, schedule="cosine", epochs=4)
    return {
        s: GridTrainer(model, v.si_mask, batch_size=64, strategy=s, train=train)
        for s in ("vmap", "map")
    }


@pytest.fixture(scope="module")
def whole_grid(whole_trainers, tiny):
    """The LR x weight-decay grid (one seed), 2 epochs, and its config."""
    cfg = Config.from_flat(
        model="mlp_si", train_mode="whole", lrs=LRS, weight_decays=WDS, seeds=(0,)
    )
    trainer = whole_trainers["vmap"]
    return (
        cfg,
        trainer.init(cfg.member_hypers, cfg.member_seeds, (8, 8, 1)),
        _fit(trainer, tiny, cfg.member_hypers, cfg.member_seeds)[0],
    )


def test_lr_by_weight_decay_grid_equals_separate_runs(whole_trainers, whole_grid, tiny):
    cfg, _, grid = whole_grid
    hypers = cfg.member_hypers
    assert [(h["lr"], h["weight_decay"]) for h in hypers] == [(lr, wd) for lr in LRS for wd in WDS]
    for i, h in enumerate(hypers):
        alone, _ = _fit(whole_trainers["map"], tiny, [h], [0])
        leaves = zip(
            jax.tree.leaves(member(grid, i)), jax.tree.leaves(member(alone, 0)), strict=True
        )
        for a, b in leaves:
            assert rel_err(a, b) < 2e-5
    # Different weight decays really train differently (the test can fail).
    a, b = (jax.tree.leaves(member(grid, i).params)[0] for i in (0, 1))
    assert rel_err(a, b) > 1e-4


def test_whole_space_leaves_the_sphere_and_weight_decay_shrinks_the_norm(whole_grid, head_mlp):
    from three_regimes_jax.engine.sphere import si_norm

    _, state0, state = whole_grid
    mask = head_mlp[1].si_mask
    rho0 = float(si_norm(member(state0, 0).params, mask))
    rho = [float(si_norm(member(state, i).params, mask)) for i in range(2)]  # LR 0.05, wd 0 / 0.2
    assert rho[0] > rho0 * (1 + 1e-4)  # SGD without wd grows the SI norm (Sec. 2)
    assert rho[1] < rho[0]


# --------------------------------------------------------------------------- augmentation


def test_augmentation_is_a_seeded_crop_with_black_padding_and_flip():
    x = jax.random.normal(jax.random.key(0), (24, 32, 32, 3))
    pad = jnp.asarray([-2.0, -3.0, -4.0])
    key = augment_key(jax.random.key_data(jax.random.key(5)), jnp.int32(7))
    a, b = random_crop_flip(key, x, pad), random_crop_flip(key, x, pad)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape
    other = random_crop_flip(augment_key(jax.random.key_data(jax.random.key(5)), 8), x, pad)
    assert not np.array_equal(a, other)
    # Every output is a crop of the padded image, possibly flipped: find it.
    padded = np.broadcast_to(np.asarray(pad), (24, 40, 40, 3)).copy()
    padded[:, 4:36, 4:36] = np.asarray(x)
    found, saw_pad, flips = 0, False, 0
    for i in range(24):
        for dy in range(9):
            for dx in range(9):
                crop = padded[i, dy : dy + 32, dx : dx + 32]
                for flip in (False, True):
                    c = crop[:, ::-1] if flip else crop
                    if np.array_equal(np.asarray(a[i]), c):
                        found += 1
                        saw_pad |= (dy, dx) != (4, 4)
                        flips += flip
    assert found >= 24 and saw_pad and 2 < flips < 22
    assert (np.asarray(a) == np.asarray(pad)).all(-1).any()  # black (-mean/std) pixels


def test_augmented_trainer_same_seed_members_agree_and_metrics_do_not_augment(tiny):
    from three_regimes_jax.engine.models import FROZEN, si_mask_of
    from three_regimes_jax.engine.train import cross_entropy, make_train_step

    model = build_model("mlp_si", 10, hidden=(8,))
    x = jnp.tile(tiny[0][:32], (1, 4, 4, 1))  # 32 x 32 images
    y = tiny[1][:32]
    mask = si_mask_of(model, (32, 32, 1))
    pad = jnp.asarray([-1.0])
    aug = GridTrainer(model, mask, batch_size=16, strategy="vmap", pad_value=pad)
    state = aug.init([0.01, 0.01, 0.01], [0, 0, 1], (32, 32, 1))
    trained, _ = aug.train_epoch(state, x, y, 0)
    k = lambda s, i: np.asarray(jax.tree.leaves(member(s, i).params)[0])  # noqa: E731
    np.testing.assert_array_equal(k(trained, 0), k(trained, 1))  # same seed: same crops
    # One step with and without augmentation differs (so the epoch above did augment).
    ms = member(state, 0)
    steps = [
        jax.jit(make_train_step(model, mask, aug.optimizer, pad_value=p))(ms, x[:16], y[:16])
        for p in (pad, None)
    ]
    first = [jax.tree.leaves(st[0].params)[0] for st in steps]
    assert rel_err(first[0], first[1]) > 1e-6
    # Metric passes see the clean images: the train loss is the clean batches' loss.
    got = aug.evaluate(trained, x, y, x, y)
    ms = member(trained, 2)
    variables = {"params": ms.params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
    want = np.mean(
        [
            cross_entropy(model.apply(variables, x[i : i + 16], train=True), y[i : i + 16])
            for i in (0, 16)
        ]
    )
    assert float(got["train_loss"][2]) == pytest.approx(float(want), rel=1e-5)


# --------------------------------------------------------------------------- config and CLI


@pytest.mark.parametrize(
    ("flat", "message"),
    [
        ({"lrs": (0.1,)}, "--lrs applies to --train whole only"),
        ({"train_mode": "whole"}, "--train whole needs --lrs"),
        (
            {"train_mode": "whole", "lrs": (0.1,), "elrs": (0.5,)},
            "--elrs applies to --train sphere",
        ),
        ({"train_mode": "whole", "lrs": (0.1,), "weight_decays": (-1e-4,)}, "--weight-decays must"),
        ({"train_mode": "whole", "lrs": (0.1,), "momentum": 1.0}, "--momentum must be in [0, 1)"),
        ({"train_mode": "whole", "lrs": (0.1,), "noninv_lr": -0.5}, "--noninv-lr must be -1"),
        ({"momentum": 0.9}, "--momentum on the sphere goes with --optimizer sphere_momentum"),
        ({"schedule": "cosine"}, "--schedule applies to --train whole only"),
        ({"model": "convnet_si", "width": 0}, "--width must be >= 1"),
        ({"train_mode": "whole", "lrs": (0.1,), "grid": "zip"}, "--grid zip applies"),
        ({"train_mode": "whole", "lrs": (0.1,), "random_walk": True}, "--random-walk applies"),
        ({"augment": True}, "--augment"),
        ({"split_test": 0.8}, "--split-test applies to --dataset ag_news only"),
        ({"model": "transformer"}, "--model transformer and --dataset ag_news go together"),
    ],
)
def test_flags_outside_their_mode_and_bad_values_are_one_line_errors(flat, message):
    with pytest.raises(UserError, match=None) as e:
        Config.from_flat(**flat)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_cli_refuses_a_flag_of_the_other_mode_even_at_its_default(tmp_path, capsys):
    from three_regimes_jax.cli import main

    base = ["sweep", "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet"]
    for extra, message in (
        (["--elrs", "1e-3", "--weight-decays", "0"], "--weight-decays applies to --train whole"),
        (["--train", "whole", "--lrs", "0.1", "--elrs", "1e-3,1e-2,1e-1,1"], "--elrs applies"),
        ([], "sweep needs --elrs"),
    ):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (tmp_path / "r").exists()


def test_whole_space_sweep_end_to_end_records_lr_and_weight_decay(tmp_path, digits):
    from plotting import overview
    from three_regimes_jax.storage.results import load_results
    from three_regimes_jax.studies.sweep import run_sweep

    cfg = Config.from_flat(
        model="mlp_si",
        hidden=(16,),
        dataset="digits",
        use_data_size=256,
        train_mode="whole",
        lrs=(0.05, 0.5),
        weight_decays=(0.0, 1e-3),
        momentum=0.9,
        schedule="cosine",
        epochs=2,
        batch_size=64,
        checkpoint_every=1,
    )
    done = run_sweep(cfg, out=tmp_path / "w", progress=False)
    res = load_results(tmp_path / "w")
    # The checkpoint restores into the template rebuilt from its meta alone.
    from three_regimes_jax.storage.checkpoint import load_checkpoint, read_meta
    from three_regimes_jax.studies.run import state_template

    template = state_template(read_meta(tmp_path / "w", 2))
    state, _ = load_checkpoint(tmp_path / "w", 2, template=template)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(done.state), strict=True):
        np.testing.assert_array_equal(a, b)
    m = res.metrics
    np.testing.assert_array_equal(m["lr"], [0.05, 0.05, 0.5, 0.5])
    np.testing.assert_array_equal(m["weight_decay"], [0.0, 1e-3, 0.0, 1e-3])
    np.testing.assert_array_equal(m["elr"], m["lr"])
    assert m["group_individually_si"].tolist() == [True]
    assert m["train_loss"].shape == (4, 3) and np.isfinite(m["train_loss"]).all()
    assert Config.from_dict(res.config) == cfg
    fig = overview(tmp_path / "w")
    assert fig.legends[0].get_title().get_text() == "LR"
    labels = [t.get_text() for t in fig.legends[1].get_texts()]  # a line style per wd
    assert labels == ["w (wd 0)", "w (wd 0.001)"]
    assert [(r["lr"], r["weight_decay"]) for r in res.summary["members"]][:2] == [
        (0.05, 0.0),
        (0.05, 1e-3),
    ]
    from three_regimes_jax.analysis.report import run_regimes_command

    with pytest.raises(UserError, match="sweeps several weight decays"):
        run_regimes_command(tmp_path / "w")


def test_use_test_size_keeps_the_first_test_examples(digits):
    from three_regimes_jax.engine.data import DataError, load_dataset

    ds = load_dataset("digits", use_test_size=100)
    np.testing.assert_array_equal(ds.y_test, digits.y_test[:100])
    assert ds.x_test.shape[0] == 100 and ds.num_train == digits.num_train
    with pytest.raises(DataError, match=r"--use-test-size must be an integer in \[1, 360\]"):
        load_dataset("digits", use_test_size=361)
