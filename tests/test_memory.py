"""The memory planner: estimates, chunk plans, and chunked grids equal to whole ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from three_regimes_jax.engine.memory import (
    MB,
    USABLE_FRACTION,
    activation_bytes,
    device_limit_bytes,
    member_bytes,
    plan_chunks,
)
from three_regimes_jax.errors import UserError


def test_plan_fills_the_usable_fraction_and_refuses_what_cannot_fit():
    assert plan_chunks(8, 100, 0, None).chunks == 1  # unknown limit: no planning
    whole = plan_chunks(8, 100, 50, 10_000)
    assert (whole.chunk_size, whole.chunks) == (8, 1)
    p = plan_chunks(8, 100, 50, 1_000)  # 0.8 * 1000 - 50 = 750 -> 7 members a chunk
    assert (p.chunk_size, p.chunks) == (7, 2) and "2 sequential chunks of 7" in p.line()
    # over 4 devices, each holding the data and 7 members: one chunk of the 8
    assert plan_chunks(8, 100, 50, 1_000, devices=4).chunks == 1
    two = plan_chunks(40, 100, 50, 1_000, devices=4)  # 28 members a chunk
    assert (two.chunk_size, two.chunks) == (28, 2) and "per device (4 devices)" in two.line()
    with pytest.raises(UserError, match="one member needs") as e:
        plan_chunks(8, 100, 50, 150)
    assert "\n" not in str(e.value) and "--memory-limit-mb" in str(e.value)
    assert USABLE_FRACTION * 150 - 50 < 100


def test_member_estimate_counts_state_and_scales_activations_with_the_batch(tiny_mlp, trainers):
    model, _ = tiny_mlp
    state = trainers["map"].init([1e-3], [0], (8, 8, 1))
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
    parts = member_bytes(model, one, (8, 8, 1), 64)
    n_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(state.params))
    assert parts["gradients"] == 2 * 4 * n_params
    assert parts["total"] == parts["state"] + parts["gradients"] + parts["activations"]
    a64, a128 = (activation_bytes(model, one, (8, 8, 1), b) for b in (64, 128))
    assert a128 == 2 * a64 > 64 * 4 * (32 + 16)  # at least the hidden layers' outputs
    limit = device_limit_bytes()
    assert limit is None or limit > 64 * MB


def test_chunked_grid_equals_the_whole_grid(trainers, tiny):
    """``map`` members one chunk at a time are bit-for-bit the whole grid (test_grid's shapes)."""
    x, y, xt, yt = tiny
    tr = trainers["map"]
    state = tr.init([1e-3, 1e-2, 1e-1, 1.0], [0] * 4, (8, 8, 1))
    try:
        whole, m_whole = tr.train_epoch(state, x, y, 0)
        ev_whole = tr.evaluate(whole, x, y, xt, yt)
        tr.chunk_size = 1
        part, m_part = tr.train_epoch(state, x, y, 0)
        ev_part = tr.evaluate(part, x, y, xt, yt)
    finally:
        tr.chunk_size = None
    a, b = (jax.tree.leaves(t) for t in ((whole, m_whole, ev_whole), (part, m_part, ev_part)))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_sweep_under_a_tiny_limit_says_so_once_and_matches(tmp_path, capsys):
    from three_regimes_jax.config import Config
    from three_regimes_jax.studies.sweep import run_sweep

    # The shapes of conftest's ``trainers`` on ``tiny`` (their programs are compiled already).
    base = Config.from_flat(
        model="mlp_si",
        hidden=(32, 16),
        dataset="digits",
        use_data_size=200,
        use_test_size=100,
        batch_size=64,
        elrs=(1e-3, 1e-2, 1e-1, 1.0),
        epochs=1,
        strategy="map",
    )
    a = run_sweep(base, out=tmp_path / "a", progress=False)
    assert capsys.readouterr().err == "" and a.summary["memory"]["chunks"] == 1
    mem = a.summary["memory"]
    # Room for one and a half members: one member at a time.
    limit = (mem["shared_mb"] + 1.5 * mem["per_member_mb_estimated"]) / USABLE_FRACTION
    b = run_sweep(base.replace(memory_limit_mb=limit), out=tmp_path / "b", progress=False)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4 sequential chunks of 1 member" in err[0]
    assert b.summary["memory"]["chunks"] == 4
    for k in ("train_loss", "test_acc", "eff_grad_norm", "si_norm", "group_elr"):
        np.testing.assert_array_equal(a.metrics[k], b.metrics[k])
    with pytest.raises(UserError, match="one member needs"):
        run_sweep(base.replace(memory_limit_mb=0.01), out=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()
