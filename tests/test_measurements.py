"""Measurements as the paper defines them (App. B, M): checked against plain computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from three_regimes_jax import Config, run_sweep
from three_regimes_jax.engine.grid import member
from three_regimes_jax.engine.models import FROZEN
from three_regimes_jax.engine.sphere import si_norm
from three_regimes_jax.storage.checkpoint import load_checkpoint
from three_regimes_jax.studies.run import load_data, make_trainer

CFG = Config.from_flat(
    dataset="digits",
    use_data_size=200,
    hidden=(16, 8),
    batch_size=64,
    elrs=(1e-2, 3e-1),
    seeds=(0, 1),
    epochs=2,
    filter_groups=True,
    filter_log_steps=(4, 8),  # 200 examples, batch 64: 4 steps per epoch, so all of epoch 2
    filter_log_elrs=(3e-1,),
    checkpoint_every=1,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("measure") / "run"
    return out, run_sweep(CFG, out=out, progress=False)


@pytest.fixture(scope="module")
def plain(run):
    """The train-set pass of the paper's get_info.py, written plainly, per member."""
    ds = load_data(CFG)
    trainer = make_trainer(CFG, ds.num_classes, ds.image_shape)
    model, mask = trainer.model, trainer.si_mask

    @jax.jit
    def batch(ms, xb, yb):
        """Summed loss, correct count and ||grad_SI L_B|| * rho of one mini-batch."""

        def loss(params):
            v = {"params": params, "batch_stats": ms.batch_stats, FROZEN: ms.frozen}
            logits = model.apply(v, xb, train=True, mutable=False)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb), logits

        ce, logits = loss(ms.params)
        grads = jax.grad(lambda p: loss(p)[0].mean())(ms.params)
        eff = si_norm(grads, mask) * si_norm(ms.params, mask)
        return jnp.sum(ce), jnp.sum(jnp.argmax(logits, -1) == yb), eff

    def measure(ms):
        bs, n = CFG.train.batch_size, len(ds.x_train)
        out = [batch(ms, ds.x_train[i : i + bs], ds.y_train[i : i + bs]) for i in range(0, n, bs)]
        total, correct, effs = (np.asarray(v, np.float64) for v in zip(*out, strict=True))
        return total.sum() / n, correct.sum() / n, effs.mean()

    return trainer, measure


def test_eff_grad_norm_is_the_mean_at_fixed_parameters(run, plain):
    out, res = run
    trainer, measure = plain
    m = res.metrics
    state, _ = load_checkpoint(out, 1, template=res.state)
    for i in range(state.size):
        loss, acc, eff = measure(member(state, i))
        assert m["train_loss"][i, 1] == pytest.approx(loss, rel=1e-5)
        assert m["train_acc"][i, 1] == pytest.approx(acc, abs=1e-6)
        assert m["eff_grad_norm"][i, 1] == pytest.approx(eff, rel=1e-4)
    # not the trajectory mean, which is kept under its own name
    assert not np.allclose(m["eff_grad_norm"][:, 1], m["eff_grad_norm_traj"][:, 1], rtol=1e-2)


def test_epoch_zero_is_the_untrained_model(run, plain):
    out, res = run
    trainer, measure = plain
    m = res.metrics
    assert m["epoch"].tolist() == [0, 1, 2]
    init = trainer.init(CFG.member_elrs, CFG.member_seeds, (8, 8, 1))
    for i in range(init.size):
        loss, acc, eff = measure(member(init, i))
        assert m["train_loss"][i, 0] == pytest.approx(loss, rel=1e-5)
        assert m["eff_grad_norm"][i, 0] == pytest.approx(eff, rel=1e-4)
    state0, _ = load_checkpoint(out, 0, template=res.state)
    np.testing.assert_array_equal(state0.step, 0)


def test_per_filter_groups_satisfy_eq3(run):
    from three_regimes_jax.engine.stats import filter_stats, group_stats, n_filters

    _, res = run
    m = res.metrics
    assert m["filter_elr"].shape == (4, 3, 16 + 8)  # every output unit of both SI kernels
    assert np.isnan(m["filter_elr"][:, 0]).all() and np.isfinite(m["filter_elr"][:, 1:]).all()
    assert m["filter_group"].tolist() == [0] * 16 + [1] * 8
    ms = member(res.state, 2)
    mask = make_trainer(CFG, 10, (8, 8, 1)).si_mask
    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(3), p.shape), ms.params)
    lr = 0.37
    fs, gs = filter_stats(ms.params, grads, mask, lr), group_stats(ms.params, grads, mask, lr)
    assert fs.elr.shape == (n_filters(ms.params, mask),) == (24,)
    # eq. 3: sum over all filters of 1/elr_f = 1/elr of the whole SI set
    assert float(jnp.sum(1.0 / fs.elr)) == pytest.approx(float(1.0 / gs.total_elr), rel=1e-5)
    # each layer's 1/elr is the sum over its filters; the ESS identity eq. 4 per filter
    np.testing.assert_allclose(
        [float(jnp.sum(1.0 / fs.elr[:16])), float(jnp.sum(1.0 / fs.elr[16:]))],
        np.asarray(1.0 / gs.elr),
        rtol=1e-5,
    )
    w = gs.total_elr / fs.elr
    total_ess_sq = float(jnp.sum(w * fs.ess**2))
    assert total_ess_sq == pytest.approx(float(gs.total_ess) ** 2, rel=1e-4)
    # in a run, a slowly moving member keeps eq. 3 for its epoch means too
    np.testing.assert_allclose((1.0 / m["filter_elr"][0, 1:]).sum(-1), 1 / 1e-2, rtol=1e-3)


def test_per_step_filter_log_for_chosen_members_and_steps(run):
    _, res = run
    m = res.metrics
    assert m["filter_log_step"].tolist() == [4, 5, 6, 7]
    assert m["filter_log_member"].tolist() == [2, 3]  # the ELR-0.3 members (seeds 0, 1)
    assert m["filter_log_elr"].shape == (2, 4, 24)
    # epoch 2 consists of exactly these steps: their mean is the epoch's recorded mean
    for k in ("filter_elr", "filter_eff_grad_norm", "filter_ess"):
        logged = m[k.replace("filter_", "filter_log_")]
        np.testing.assert_allclose(logged.mean(axis=1), m[k][2:, 2], rtol=1e-5)
    from three_regimes_jax.errors import UserError

    with pytest.raises(UserError, match="START < END and needs --filter-groups"):
        CFG.replace(filter_groups=False)
    with pytest.raises(UserError, match="START < END"):
        CFG.replace(filter_log_steps=(5, 5))


def test_seeds_share_seed_zeros_head_unless_per_seed(run):
    _, res = run
    s = res.state
    head = jax.tree.leaves(s.frozen)[0]
    np.testing.assert_array_equal(head[1], head[0])  # seed 1 member, seed 0 member
    kernel = s.params["SIDense_0"]["kernel"]
    assert not np.array_equal(kernel[1], kernel[0])
    ds = load_data(CFG)
    own = make_trainer(CFG.replace(per_seed_head=True), ds.num_classes, ds.image_shape)
    shared = make_trainer(CFG, ds.num_classes, ds.image_shape)
    a = own.init([1e-2, 1e-2], [0, 1], (8, 8, 1))
    b = shared.init([1e-2], [0], (8, 8, 1))
    fa, fb = jax.tree.leaves(a.frozen)[0], jax.tree.leaves(b.frozen)[0]
    np.testing.assert_array_equal(fa[0], fb[0])  # seed 0 is the same either way
    assert not np.array_equal(fa[1], fa[0])


def test_zip_grid_pairs_elr_i_with_seed_i():
    c = CFG.replace(grid="zip", elrs=(1e-3, 1e-2), seeds=(5, 7))
    assert (c.member_elrs, c.member_seeds) == ([1e-3, 1e-2], [5, 7])
    from three_regimes_jax.errors import UserError

    with pytest.raises(UserError, match="as many seeds as ELRs"):
        CFG.replace(grid="zip", seeds=(0, 1, 2))


def test_random_walk_replicates_the_regular_runs_step_lengths(run):
    """A tangent step of effective length s turns theta by exactly arctan(elr * s)."""
    out, res = run
    rw = run_sweep(
        CFG.replace(
            random_walk=True, random_walk_from=str(out), checkpoint_every=0, filter_log_steps=()
        ),
        progress=False,
    ).metrics
    ref = res.metrics["eff_grad_norm_traj"][:, 1:]
    want = 1.0 / np.sqrt(1.0 + (res.metrics["elr"][:, None] * ref) ** 2)
    np.testing.assert_allclose(rw["step_cos"][:, 1:], want, rtol=1e-5)
    # without the regular run, the steps take the random walk's own gradient norm
    assert not np.allclose(rw["eff_grad_norm_traj"][:, 1:], ref, rtol=1e-2)


def test_precision_is_recorded(run):
    _, res = run
    assert res.config["run"]["precision"] == "highest" and res.summary["precision"] == "highest"
