"""Sharpness measures against dense matrices on a tiny SI MLP; equilibrium helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from three_regimes_jax.engine import diagnostics, linalg, metrics
from three_regimes_jax.engine.grid import stack
from three_regimes_jax.engine.models import build_model, init_model
from three_regimes_jax.engine.sphere import si_norm, sphere_sgd

N, BS, N_PROBES, N_ITERS, SCALE = 32, 16, 8, 20, 3.7


def _scale_si(params, mask, c):
    return jax.tree.map(lambda m, p: p * c if m else p, mask, params)


@pytest.fixture(scope="module")
def setup():
    """Tiny MLP-SI (5 -> 6 -> 4 -> 3), 32 examples, and one jitted grid sharpness call."""
    model = build_model("mlp_si", 3, hidden=(6, 4))
    v = init_model(model, jax.random.key(1), (5,))
    rng = np.random.default_rng(2)  # numpy: eager jax.random compiles a kernel per shape
    x = jnp.asarray(rng.normal(size=(N, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, N), jnp.int32)
    key = jax.random.key(3)
    fn = metrics.make_sharpness_fn(
        model.apply, v.si_mask, batch_size=BS, n_probes=N_PROBES, n_iters=N_ITERS, grid=True
    )
    scaled = _scale_si(v.params, v.si_mask, SCALE)
    grid = stack([v.params, scaled])
    out = fn(grid, stack([v.batch_stats] * 2), stack([v.frozen] * 2), x, y, key)
    out = {k: np.asarray(a) for k, a in out.items()}
    return model, v, x, y, key, out


@pytest.fixture(scope="module")
def dense(setup):
    """Exact SI-block Hessian, Fisher and mini-batch gradients at theta_SI / rho."""
    model, v, x, y, _, _ = setup
    flat, unravel = ravel_pytree(v.params)  # every trainable leaf of this model is SI
    assert all(jax.tree.leaves(v.si_mask))
    w0 = flat / jnp.linalg.norm(flat)

    def logits(w, xb):
        variables = {"params": unravel(w), "batch_stats": v.batch_stats, "frozen": v.frozen}
        return model.apply(variables, xb, train=True)

    def batch_loss(w, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(logits(w, xb), yb).mean()

    xs, ys = x.reshape(-1, BS, 5), y.reshape(-1, BS)

    @jax.jit
    def exact(w):
        loss = lambda w: jnp.mean(jax.vmap(batch_loss, (None, 0, 0))(w, xs, ys))  # noqa: E731
        jac = jax.vmap(jax.jacfwd(logits), (None, 0))(w, xs)  # [nb, bs, C, d]
        probs = jax.nn.softmax(jax.vmap(logits, (None, 0))(w, xs))  # [nb, bs, C]
        grads = jax.vmap(jax.grad(batch_loss), (None, 0, 0))(w, xs, ys)  # [nb, d]
        return jax.hessian(loss)(w), jac, probs, grads

    hess, jac, p, grads = (np.asarray(a, np.float64) for a in exact(w0))
    h = np.einsum("bic,cd->bicd", p, np.eye(p.shape[-1])) - np.einsum("bic,bid->bicd", p, p)
    fim = np.einsum("bicd,bice,bief->df", jac, h, jac) / (BS * len(xs))
    return {"hessian": (hess + hess.T) / 2, "fim": (fim + fim.T) / 2, "grads": grads}


def _hutchinson_se(a: np.ndarray, n_probes: int) -> float:
    off = a - np.diag(np.diag(a))
    return float(np.sqrt(2.0 * np.sum(off**2) / n_probes))


def test_hessian_top_eig_matches_dense(setup, dense):
    top = np.linalg.eigvalsh(dense["hessian"])[-1]
    assert top > 0
    np.testing.assert_allclose(setup[-1]["hessian_top_eig"][0], top, rtol=1e-3)


def test_fim_top_eig_matches_dense(setup, dense):
    top = np.linalg.eigvalsh(dense["fim"])[-1]
    np.testing.assert_allclose(setup[-1]["fim_top_eig"][0], top, rtol=1e-3)


@pytest.mark.parametrize("name", ["hessian", "fim"])
def test_hutchinson_trace_within_statistical_error(setup, dense, name):
    a = dense[name]
    exact, se = np.trace(a), _hutchinson_se(a, N_PROBES)
    est = setup[-1][f"{name}_trace"][0]
    assert abs(est - exact) <= 4 * se, (est, exact, se)
    assert se < abs(exact)  # the bound is informative


def test_grad_cov_trace_matches_direct(setup, dense):
    direct = np.mean(np.sum(dense["grads"] ** 2, axis=-1))
    np.testing.assert_allclose(setup[-1]["grad_cov_trace"][0], direct, rtol=1e-5)


def test_scale_invariance_and_grid(setup):
    out = setup[-1]
    assert set(out) == set(metrics.SHARPNESS_KEYS)
    for k, a in out.items():
        assert a.shape == (2,) and np.all(np.isfinite(a)), k
        np.testing.assert_allclose(a[1], a[0], rtol=1e-4, err_msg=k)


def test_standalone_function_matches_sharpness(setup):
    """SharpnessProblem's methods, with the documented split of the key, give the grid's values."""
    model, v, x, y, key, out = setup
    k_ht, k_ft, k_he, k_fe = jax.random.split(key, 4)

    @jax.jit
    def standalone(params):
        args = (model.apply, params, v.batch_stats, v.frozen, v.si_mask, x, y)
        pb = metrics.SharpnessProblem(*args, batch_size=BS)
        return {
            "grad_cov_trace": pb.grad_cov_trace(),
            "hessian_trace": pb.hessian_trace(k_ht, N_PROBES),
            "fim_trace": pb.fim_trace(k_ft, N_PROBES),
            "hessian_top_eig": pb.hessian_top_eig(k_he, N_ITERS),
            "fim_top_eig": pb.fim_top_eig(k_fe, N_ITERS),
        }

    got = standalone(v.params)
    assert set(got) == set(metrics.SHARPNESS_KEYS)
    for k, a in got.items():
        np.testing.assert_allclose(a, out[k][0], rtol=1e-5, err_msg=k)


def test_lanczos_diagonal_matrix_with_breakdown():
    # n_iters > dim and a degenerate spectrum: Lanczos breaks down and restarts.
    eigs = jnp.array([5.0, 2.0, 2.0, 2.0, 1.0, 0.5])
    alpha, beta = linalg.lanczos_tridiag(lambda v: eigs * v, 6, jax.random.key(0), 10)
    ritz = np.asarray(linalg.tridiag_eigvalsh(alpha, beta))
    assert np.all(np.isfinite(ritz)) and ritz.shape == (6,)
    np.testing.assert_allclose(ritz[-1], 5.0, rtol=1e-5)
    assert ritz.min() >= 0.5 - 1e-5


def test_adjacent_cos(setup):
    _, v, *_ = setup
    mask = v.si_mask
    np.testing.assert_allclose(diagnostics.adjacent_cos(v.params, v.params, mask), 1.0, rtol=1e-6)
    other = init_model(build_model("mlp_si", 3, hidden=(6, 4)), jax.random.key(7), (5,)).params
    c = diagnostics.adjacent_cos(v.params, other, mask)
    assert -1.0 <= c < 0.99
    c_scaled = diagnostics.adjacent_cos(
        _scale_si(v.params, mask, SCALE), _scale_si(other, mask, 0.2), mask
    )
    np.testing.assert_allclose(c_scaled, c, rtol=1e-5, atol=1e-6)


def test_ess_spread_and_equilibration_summary():
    np.testing.assert_allclose(diagnostics.ess_spread(jnp.full((3, 4), 0.25)), 0.0, atol=1e-7)
    np.testing.assert_allclose(diagnostics.ess_spread(jnp.array([1.0, 3.0])), 0.5, rtol=1e-6)
    g, t, n = 2, 5, 3
    ess = jnp.broadcast_to(jnp.arange(t, dtype=jnp.float32)[None, :, None] + 1.0, (g, t, n))
    elr = ess * jnp.array([1.0, 2.0, 4.0])
    s = diagnostics.equilibration_summary(elr, 2 * ess, ess, last_k=2)
    assert s["ess"].shape == (g, n) and s["ess_spread"].shape == (g,)
    np.testing.assert_allclose(s["ess"], 4.5)
    np.testing.assert_allclose(s["ess_spread"], 0.0, atol=1e-7)
    np.testing.assert_allclose(s["elr"][0], [4.5, 9.0, 18.0])
    np.testing.assert_allclose(s["elr_spread"], np.std([1, 2, 4]) / np.mean([1, 2, 4]), rtol=1e-6)
    with pytest.raises(ValueError, match="last_k"):
        diagnostics.equilibration_summary(elr, ess, ess, last_k=6)


def test_tangent_gaussian(setup):
    model, v, x, y, *_ = setup
    mask = v.si_mask

    def loss(p):
        variables = {"params": p, "batch_stats": v.batch_stats, "frozen": v.frozen}
        logits = model.apply(variables, x[:BS], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[:BS]).mean()

    tx = sphere_sgd(0.5, mask)
    state = tx.init(v.params)

    def step(g):
        new = optax.apply_updates(v.params, tx.update(g, state, v.params)[0])
        return new, si_norm(jax.tree.map(jnp.subtract, new, v.params), mask)

    @jax.jit
    def run(key):
        grads = jax.grad(loss)(v.params)
        r = diagnostics.tangent_gaussian(key, v.params, grads, mask)
        cos = [
            jnp.vdot(p, d) / (jnp.linalg.norm(p) * jnp.linalg.norm(d))
            for p, d in zip(jax.tree.leaves(v.params), jax.tree.leaves(r), strict=True)
        ]
        new_r, len_r = step(r)
        _, len_g = step(grads)
        return (
            jnp.stack(cos),
            si_norm(r, mask),
            si_norm(grads, mask),
            si_norm(new_r, mask),
            len_r,
            len_g,
        )

    cos, r_norm, g_norm, new_norm, len_r, len_g = run(jax.random.key(5))
    assert np.all(np.abs(cos) < 1e-5)
    np.testing.assert_allclose(r_norm, g_norm, rtol=1e-5)
    np.testing.assert_allclose(new_norm, si_norm(v.params, mask), rtol=1e-6)
    assert float(len_g) > 1e-3
    np.testing.assert_allclose(len_r, len_g, rtol=1e-4)


@pytest.fixture(scope="module")
def trainable_last(setup):
    """The tiny MLP with a trainable (non-SI) last layer."""
    model = build_model("mlp_si", 3, hidden=(6, 4), train_last_layer=True)
    v = init_model(model, jax.random.key(0), (5,))
    assert not all(jax.tree.leaves(v.si_mask))
    return model, v


def test_tangent_gaussian_zeros_non_si(trainable_last):
    _, v = trainable_last
    ones = jax.tree.map(jnp.ones_like, v.params)
    r = diagnostics.tangent_gaussian(jax.random.key(1), v.params, ones, v.si_mask)
    for m, d in zip(jax.tree.leaves(v.si_mask), jax.tree.leaves(r), strict=True):
        assert bool(jnp.any(d != 0)) == m


def test_measures_restricted_to_si(setup, trainable_last):
    model, v = trainable_last
    x, y = setup[2], setup[3]
    rho = si_norm(v.params, v.si_mask)
    at_unit = _scale_si(v.params, v.si_mask, 1 / rho)

    def si_grad_sq(xb, yb):
        def loss(p):
            logits = model.apply({"params": p, "batch_stats": v.batch_stats}, xb, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        g = jax.grad(loss)(at_unit)  # all leaves; only the SI ones are compared
        return si_norm(g, v.si_mask) ** 2

    direct = jax.jit(
        lambda: jnp.mean(jax.vmap(si_grad_sq)(x.reshape(-1, BS, 5), y.reshape(-1, BS)))
    )()
    args = (model.apply, v.params, v.batch_stats, v.frozen, v.si_mask, x, y)
    gcov = jax.jit(lambda: metrics.SharpnessProblem(*args, batch_size=BS).grad_cov_trace())()
    np.testing.assert_allclose(gcov, direct, rtol=1e-5)
