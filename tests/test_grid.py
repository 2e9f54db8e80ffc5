"""The grid trainer: member == standalone run, strategies agree, sphere kept, NaNs contained."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import rel_err

from three_regimes_jax.engine.grid import (
    choose_strategy,
    finite_members,
    member,
    shard_grid,
    stack,
)
from three_regimes_jax.engine.models import build_model

ALL_ELRS = [1e-3, 1e-2, 1e-1, 1.0]


def _run(trainer, tiny, elrs, seeds, epochs=3):
    x, y, *_ = tiny
    state = trainer.init(elrs, seeds, (8, 8, 1))
    for e in range(epochs):
        state, m = trainer.train_epoch(state, x, y, e)
    return state, m


@pytest.fixture(scope="module")
def grid_runs(trainers, tiny):
    """3 epochs of 4 steps (200 examples, batch 64: 3 full + 1 partial) = 12 steps."""
    return {s: _run(trainers[s], tiny, ALL_ELRS, [0] * len(ALL_ELRS)) for s in trainers}


@pytest.fixture(scope="module")
def standalone(trainers, tiny):
    """Each ELR of ALL_ELRS trained alone: one-member grids, the same 12 steps."""
    return [_run(trainers["map"], tiny, [elr], [0])[0] for elr in ALL_ELRS]


def test_steps_per_epoch_keep_last_partial_batch(grid_runs, tiny_mlp, tiny):
    state, _ = grid_runs["vmap"]
    assert np.all(np.asarray(state.step) == 3 * 4)  # ceil(200 / 64) = 4 steps an epoch
    from three_regimes_jax.engine.trainer import GridTrainer

    dropped = GridTrainer(*tiny_mlp, batch_size=64, strategy="vmap", drop_last=True)
    s, _ = _run(dropped, tiny, [1e-2], [0], epochs=1)
    assert int(s.step[0]) == 3


def test_map_member_equals_standalone_run_exactly(grid_runs, standalone):
    state, _ = grid_runs["map"]
    for i, single in enumerate(standalone):
        for a, b in zip(
            jax.tree.leaves(member(state, i)), jax.tree.leaves(member(single, 0)), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_vmap_grid_member_matches_standalone_run_to_float_tolerance(grid_runs, standalone):
    """12 steps, rtol 1e-5, at the ELRs where the dynamics are not chaotic (1e-3, 1e-2)."""
    state, _ = grid_runs["vmap"]
    assert int(state.step[0]) == 12
    for i, elr in enumerate(ALL_ELRS):
        if elr > 1e-2:
            continue  # chaotic regimes amplify float reassociation
        for a, b in zip(
            jax.tree.leaves(member(state.params, i)),
            jax.tree.leaves(member(standalone[i].params, 0)),
            strict=True,
        ):
            assert rel_err(a, b) < 1e-5


def test_vmap_and_map_strategies_agree(grid_runs):
    (sv, mv), (sm, mm) = grid_runs["vmap"], grid_runs["map"]
    for i, elr in enumerate(ALL_ELRS):
        if elr > 1e-2:
            continue  # chaotic regimes amplify float reassociation; see test above
        for a, b in zip(
            jax.tree.leaves(member(sv.params, i)),
            jax.tree.leaves(member(sm.params, i)),
            strict=True,
        ):
            assert rel_err(a, b) < 1e-5
    np.testing.assert_allclose(mv["group_elr"][:2], mm["group_elr"][:2], rtol=1e-5)


def test_vmap_over_more_than_a_chunk_of_members_agrees_with_map(trainers, tiny):
    """On CPU, G > CPU_VMAP_CHUNK vmaps in chunks (incl. a remainder); members still == map."""
    from three_regimes_jax.engine.grid import CPU_VMAP_CHUNK

    g = CPU_VMAP_CHUNK + 2
    elrs, seeds = list(np.geomspace(1e-3, 1e-2, g)), [0, 1] * (g // 2)
    (sv, mv), (sm, mm) = (_run(trainers[s], tiny, elrs, seeds, epochs=1) for s in ("vmap", "map"))
    for a, b in zip(jax.tree.leaves(sv.params), jax.tree.leaves(sm.params), strict=True):
        assert rel_err(a, b) < 1e-5
    np.testing.assert_allclose(mv["batch_loss"], mm["batch_loss"], rtol=1e-5)


def test_sphere_norm_kept_and_group_stats(grid_runs, trainers, tiny):
    state, m = grid_runs["vmap"]
    x, y, xt, yt = tiny
    ev = trainers["vmap"].evaluate(state, x, y, xt, yt)
    np.testing.assert_allclose(ev["si_norm"], state.opt_state.radius, rtol=1e-5)
    assert m["group_elr"].shape == (4, 2) and m["group_ess"].shape == (4, 2)
    # eq. 3 (1/elr = sum_i 1/elr_i) makes every group's ELR at least the member's
    # total ELR at every step, hence also for the epoch means recorded here
    group_min = np.asarray(m["group_elr"]).min(1)
    assert np.all(group_min >= np.asarray(ALL_ELRS) * (1 - 1e-5)), group_min
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert ev[k].shape == (4,) and np.all(np.isfinite(ev[k]))
    assert float(ev["train_loss"][0]) < float(ev["train_loss"][-1])  # low ELR learns


def test_eval_train_mode_uses_batch_stats(grid_runs, trainers, tiny):
    """train_loss comes from train-mode BN, so it differs from an eval-mode pass."""
    state, _ = grid_runs["map"]
    x, y, *_ = tiny
    ev = trainers["map"].evaluate(state, x, y, x, y)
    assert not np.allclose(ev["train_loss"], ev["test_loss"])


def test_seeds_control_init_and_batch_order(trainers):
    st = trainers["vmap"].init([0.1, 0.1, 0.2], [0, 1, 0], (8, 8, 1))
    k0 = lambda i: np.asarray(member(st.params, i)["SIDense_0"]["kernel"])  # noqa: E731
    assert np.array_equal(k0(0), k0(2)) and not np.array_equal(k0(0), k0(1))
    keys = np.asarray(st.data_key)
    assert np.array_equal(keys[0], keys[2]) and not np.array_equal(keys[0], keys[1])
    assert np.asarray(st.opt_state.elr).tolist() == pytest.approx([0.1, 0.1, 0.2])


def test_nonfinite_member_is_recorded_not_fatal(grid_runs, trainers, tiny):
    """An ELR of 1e38 overflows to inf/NaN; the other members are untouched.

    The same grid as ``grid_runs["map"]`` with member 1's ELR replaced: members
    0, 2 and 3 must end bit-for-bit where they end there.
    """
    x, y, xt, yt = tiny
    tr = trainers["map"]
    good, _ = grid_runs["map"]
    bad_elrs = [ALL_ELRS[0], 1e38, *ALL_ELRS[2:]]
    bad, mb = _run(tr, tiny, bad_elrs, [0] * len(bad_elrs))
    evb = jax.device_get(tr.evaluate(bad, x, y, xt, yt))
    ok = finite_members(bad, {**jax.device_get(mb), **evb})
    assert ok.tolist() == [True, False, True, True]
    for i in (0, 2, 3):
        for a, b in zip(
            jax.tree.leaves(member(bad, i)), jax.tree.leaves(member(good, i)), strict=True
        ):
            np.testing.assert_array_equal(a, b)


def test_member_and_stack_roundtrip(grid_runs):
    state, _ = grid_runs["vmap"]
    again = stack([member(state, i) for i in range(state.size)])
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(a, b)


def test_shard_grid_is_a_noop_on_one_device(grid_runs):
    """One device (the fast suite's): the grid is returned as is; see the slow test below."""
    state, _ = grid_runs["vmap"]
    assert shard_grid(state, jax.devices()[:1]) is state


def test_choose_strategy():
    conv, mlp = build_model("convnet_si", 10, width=2), build_model("mlp_si", 10)
    assert choose_strategy("auto", conv, "cpu") == "map"
    assert choose_strategy("auto", conv, "gpu") == "vmap"
    assert choose_strategy("auto", mlp, "cpu") == "vmap"
    assert choose_strategy("map", mlp, "cpu") == "map"


SHARD_SCRIPT = """
import json, sys
import jax
from three_regimes_jax import Config, run_sweep
cfg = Config.from_flat(dataset="digits", elrs=(1e-3, 3e-3, 1e-2, 3e-2), epochs=2, batch_size=64,
                  hidden=(32, 16), use_data_size=256, strategy="vmap")
res = run_sweep(cfg, progress=False)
leaf = jax.tree.leaves(res.state.params)[0]
print(json.dumps({"devices": jax.device_count(), "shards": len(leaf.sharding.device_set),
                  "train_loss": res.metrics["train_loss"].tolist()}))
"""


def _shard_run(n_devices: int) -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n_devices}"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, "-c", SHARD_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_grid_sharded_over_four_devices_matches_one_device():
    """Two fresh processes (forced 1 and 4 CPU devices): the same sweep, split member-wise."""
    one, four = _shard_run(1), _shard_run(4)
    assert four["devices"] == 4 and four["shards"] == 4 and one["shards"] == 1
    np.testing.assert_allclose(four["train_loss"], one["train_loss"], rtol=1e-5)


def test_fused_sphere_step_equals_optax_update_path(trainers, tiny_mlp, tiny):
    """The trainer's fused step (``opt.apply``) == ``opt.update`` + ``optax.apply_updates``."""
    from three_regimes_jax.engine.train import make_train_step

    model, mask = tiny_mlp
    opt = trainers["map"].optimizer
    assert opt.apply is not None
    fused = jax.jit(make_train_step(model, mask, opt))
    generic = jax.jit(make_train_step(model, mask, opt._replace(apply=None)))
    x, y, *_ = tiny
    a = b = member(trainers["map"].init([0.5], [0], (8, 8, 1)), 0)
    for i in range(5):
        xb, yb = x[64 * i % 192 :][:64], y[64 * i % 192 :][:64]
        a, ma = fused(a, xb, yb)
        b, mb = generic(b, xb, yb)
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        assert rel_err(u, v) < 1e-5
    for k in ma:
        np.testing.assert_allclose(ma[k], mb[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert -1.0 < float(ma["step_cos"]) < 1.0  # the step moved the weights
