"""The fixed-ELR sphere optimizer against its closed form and the paper's equations."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from three_regimes_jax.engine.diagnostics import adjacent_cos
from three_regimes_jax.engine.sphere import (
    elr_to_lr,
    leaf_sums,
    project_to_sphere,
    scale_invariant,
    si_group_names,
    si_norm,
    sphere_sgd,
    sphere_step,
    split_si,
)
from three_regimes_jax.engine.stats import group_stats

MASK = {"a": True, "b": {"w": True, "v": True}, "frozen_like": False}


@functools.cache
def _params(key=0):
    @jax.jit
    def make(key):
        k = jax.random.split(key, 4)
        return {
            "a": jax.random.normal(k[0], (5, 3)),
            "b": {"w": jax.random.normal(k[1], (7,)), "v": jax.random.normal(k[2], (2, 2))},
            "frozen_like": jax.random.normal(k[3], (4,)),
        }

    with jax.ensure_compile_time_eval():  # also when first called while tracing
        return make(jax.random.key(key))


@functools.cache
def _targets():
    """Constants (NumPy), so that the programs below hold no random-number kernels."""

    @jax.jit
    def make(key):
        k = jax.random.split(key, 3)
        return [
            jax.random.normal(k[0], (5, 3)),
            jax.random.normal(k[1], (7,)),
            jax.random.normal(k[2], (2, 2)),
        ]

    with jax.ensure_compile_time_eval():  # also when first called while tracing
        return [np.asarray(t) for t in make(jax.random.key(99))]


def si_loss(params):
    """A random function that is SI in each group: depends on theta_i/||theta_i|| only."""
    loss = 0.0
    for p, t, s in zip(
        [params["a"], params["b"]["w"], params["b"]["v"]], _targets(), [1.0, 2.0, 4.0], strict=True
    ):
        u = p / jnp.linalg.norm(p)
        loss = loss + s * jnp.sum(jnp.sin(3 * u) * t) + s * jnp.sum(u * t) ** 2
    return loss + 0.0 * jnp.sum(params["frozen_like"])


_si_grad = jax.jit(jax.grad(si_loss))


def _train(elr, steps, params=None):
    """``steps`` SGD steps on the sphere (``elr`` and ``steps`` may be traced)."""
    params = _params() if params is None else params
    tx = sphere_sgd(elr, MASK)

    def step(_, carry):
        p, s = carry
        g = jax.grad(si_loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    p, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return p


# One compiled program for every single run below: ELR and step count are traced.
_train_jit = jax.jit(_train)


def test_norm_preserved_over_1000_steps():
    p0 = _params()
    rho = si_norm(p0, MASK)
    p = _train_jit(0.3, 1000)
    assert abs(float(si_norm(p, MASK)) / float(rho) - 1) < 1e-5


def test_non_si_leaves_bit_for_bit_unchanged():
    p0 = _params()
    p = _train_jit(1.0, 20)
    assert np.array_equal(np.asarray(p["frozen_like"]), np.asarray(p0["frozen_like"]))
    # and the SI leaves did move
    assert not np.allclose(np.asarray(p["a"]), np.asarray(p0["a"]))


def test_one_step_equals_closed_form():
    p = _params()
    elr = 0.37
    tx = sphere_sgd(elr, MASK)

    @jax.jit
    def one_step(p):
        g = jax.grad(si_loss)(p)
        u, _ = tx.update(g, tx.init(p), p)
        return optax.apply_updates(p, u), g

    new, g = one_step(p)
    flat = lambda t: np.concatenate(  # noqa: E731
        [
            np.asarray(t["a"]).ravel(),
            np.asarray(t["b"]["v"]).ravel(),
            np.asarray(t["b"]["w"]).ravel(),
        ]
    )
    theta, grad = flat(p).astype(np.float64), flat(g).astype(np.float64)
    rho = np.linalg.norm(theta)
    hat = theta - elr * rho**2 * grad
    expected = rho * hat / np.linalg.norm(hat)
    np.testing.assert_allclose(flat(new), expected, rtol=2e-5, atol=2e-6)


def test_radius_argument_and_traced_hyperparameters():
    p = _params()
    g = _si_grad(p)

    def one(elr, radius):
        tx = sphere_sgd(elr, MASK, radius=radius)
        u, _ = tx.update(g, tx.init(p), p)
        return si_norm(optax.apply_updates(p, u), MASK)

    out = jax.jit(jax.vmap(one))(jnp.array([0.1, 1.0]), jnp.array([2.0, 5.0]))
    np.testing.assert_allclose(out, [2.0, 5.0], rtol=1e-6)


@jax.jit
def _stats(p, elr):
    g = jax.grad(si_loss)(p)
    return group_stats(p, g, MASK, elr_to_lr(elr, si_norm(p, MASK)))


def test_eq3_individual_elrs_harmonic_sum():
    s = _stats(_params(), 0.05)
    np.testing.assert_allclose(np.sum(1.0 / s.elr), 1.0 / s.total_elr, rtol=1e-5)
    np.testing.assert_allclose(s.total_elr, 0.05, rtol=1e-5)


def test_eq4_total_ess_is_weighted_sum_of_group_ess():
    s = _stats(_params(), 0.05)
    w = s.total_elr / s.elr
    np.testing.assert_allclose(s.total_ess**2, np.sum(w * s.ess**2), rtol=1e-5)


def test_eq5_elr_update_rule_step_to_step():
    """elr_i' = elr_i (1 + (elr g)^2) / (1 + (elr_i g_i)^2) for an exactly SI function."""
    elr = 0.2
    tx = sphere_sgd(elr, MASK)
    p = _params(3)
    state = tx.init(p)
    lr = elr_to_lr(elr, state.radius)

    @jax.jit
    def step(p, state):
        g = jax.grad(si_loss)(p)
        s = group_stats(p, g, MASK, lr)
        u, state = tx.update(g, state, p)
        p = optax.apply_updates(p, u)
        return p, state, s, group_stats(p, g, MASK, lr)

    for _ in range(10):
        p, state, s, s_next = step(p, state)
        pred = s.elr * (1 + s.total_ess**2) / (1 + s.ess**2)
        np.testing.assert_allclose(s_next.elr, pred, rtol=1e-4)


def test_vmap_over_four_elrs_equals_separate_runs():
    # Convergent ELRs for this function: at high ELR the dynamics are chaotic, so
    # float reassociation between batched and single kernels is amplified.
    elrs = [1e-4, 1e-3, 3e-3, 1e-2]
    batched = jax.jit(jax.vmap(lambda e: _train(e, 30)))(jnp.array(elrs))
    for i, e in enumerate(elrs):
        single = _train_jit(e, 30)
        for a, b in zip(jax.tree.leaves(batched), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6)


def test_projection_after_momentum_sgd():
    p = _params()
    rho = float(si_norm(p, MASK))
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), project_to_sphere(MASK))
    state = tx.init(p)

    @jax.jit
    def step(p, state):
        g = jax.grad(lambda q: si_loss(q) + jnp.sum(q["frozen_like"] ** 2))(p)
        u, state = tx.update(g, state, p)
        return optax.apply_updates(p, u), state

    for _ in range(5):
        p_new, state = step(p, state)
        # non-SI leaves follow plain momentum SGD: the update passes through
        assert not np.allclose(p_new["frozen_like"], p["frozen_like"])
        p = p_new
        assert abs(float(si_norm(p, MASK)) / rho - 1) < 1e-5


def test_si_mask_comes_from_declaration_not_names():
    class M(nn.Module):
        @nn.compact
        def __call__(self, x):
            w = self.param("kernel", nn.initializers.ones, (2, 2))  # not declared SI
            v = self.param("anything", scale_invariant(nn.initializers.ones), (2,))
            return x @ w + v

    boxed = M().init(jax.random.key(0), jnp.ones((1, 2)))["params"]
    params, mask = split_si(boxed)
    assert mask == {"kernel": False, "anything": True}
    assert isinstance(params["anything"], jax.Array)
    assert si_group_names(mask) == ["anything"]


def test_mask_structure_mismatch_is_clear():
    with pytest.raises(ValueError, match="si_mask"):
        si_norm({"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": True})


def test_fused_sphere_step_equals_two_pass_projection():
    """``sphere_step`` (analytic ``||h||`` from the leaf sums) == materialise h, reduce, rescale."""
    p = _params()
    g = _si_grad(p)
    lr = elr_to_lr(0.37, si_norm(p, MASK))
    sums = leaf_sums(p, g, MASK)
    hat = jax.tree.map(lambda m, x, d: x - lr * d if m else x, MASK, p, g)
    expected = project_to_sphere(MASK).update(
        jax.tree.map(lambda h, x: h - x, hat, p), project_to_sphere(MASK).init(p), p
    )[0]
    expected = optax.apply_updates(p, expected)
    new, cos = sphere_step(p, g, MASK, lr, si_norm(p, MASK), sums)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert np.array_equal(np.asarray(new["frozen_like"]), np.asarray(p["frozen_like"]))
    assert float(cos) == pytest.approx(float(adjacent_cos(p, new, MASK)), rel=1e-6)
    assert float(cos) < 1.0
    # the sums are the per-leaf squared norms and inner products (si_group_names order)
    leaves = [p["a"], p["b"]["v"], p["b"]["w"]]
    grads = [g["a"], g["b"]["v"], g["b"]["w"]]
    np.testing.assert_allclose(sums.pp, [np.sum(np.square(x)) for x in leaves], rtol=1e-6)
    np.testing.assert_allclose(sums.gg, [np.sum(np.square(x)) for x in grads], rtol=1e-6)
    np.testing.assert_allclose(
        sums.pg, [np.sum(x * d) for x, d in zip(leaves, grads, strict=True)], atol=1e-6
    )
