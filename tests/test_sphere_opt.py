"""Optimizers on spheres (engine/sphere_opt.py): norms kept, closed forms, limits, vmap."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from three_regimes_jax.config import Config
from three_regimes_jax.engine.sphere_opt import ON_SPHERE, OPTIMIZERS, sphere_optimizer
from three_regimes_jax.errors import UserError

MASK = {"a": True, "b": True, "c": False}
SHAPES = {"a": (4, 3), "b": (3, 2), "c": (2,)}
A = jax.random.normal(jax.random.key(7), (18,))


def params0():
    keys = jax.random.split(jax.random.key(0), 3)
    return {k: jax.random.normal(kk, SHAPES[k]) for k, kk in zip(SHAPES, keys, strict=True)}


def loss(p):
    """A smooth function that is not scale-invariant: its gradient has a radial part."""
    flat = jnp.concatenate([p["a"].ravel(), p["b"].ravel()])
    return jnp.sum(jnp.sin(flat * A)) + 0.3 * jnp.sum(flat**2) + jnp.sum(p["c"] ** 2)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def run(opt, params, elr, steps, noise=0.0):
    """``steps`` updates on ``loss`` (plus Gaussian gradient noise), under ``lax.scan``."""
    state = opt.init(params, elr=elr)

    def body(carry, key):
        p, s = carry
        g = jax.grad(loss)(p)
        g = jax.tree.map(lambda x, k: x + noise * jax.random.normal(k, x.shape), g,
                         {"a": key, "b": jax.random.fold_in(key, 1), "c": key})  # fmt: skip
        u, s = opt.update(g, s, p)
        return (jax.tree.map(lambda x, d: x + d, p, u), s), None

    (p, s), _ = jax.lax.scan(body, (params, state), jax.random.split(jax.random.key(1), steps))
    return p, s


def group_norms(p, sphere):
    if sphere == "total":
        return np.sqrt([np.sum(np.asarray(p["a"]) ** 2) + np.sum(np.asarray(p["b"]) ** 2)])
    if sphere == "layer":
        return np.array([np.linalg.norm(p["a"]), np.linalg.norm(p["b"])])
    return np.concatenate([np.linalg.norm(p[k], axis=0) for k in ("a", "b")])


NORM_CASES = [
    ("sgd", {}),
    ("riemannian_sgd", {}),
    ("riemannian_sgd", {"retraction": "exp"}),
    ("sphere_momentum", {"momentum": 0.9}),
    ("sphere_momentum", {"momentum": 0.9, "retraction": "exp"}),
    ("sphere_adam", {}),
]
# Fast: every optimizer on the total sphere, and every sphere with both retractions; the
# rest of the optimizer x sphere matrix is slow.
FAST = {(n, str(kw), "total") for n, kw in NORM_CASES} | {
    (n, str(kw), s) for n, kw in NORM_CASES[3:5] for s in ("layer", "filter")
}
CASES = [pytest.param(n, kw, s, marks=() if (n, str(kw), s) in FAST else pytest.mark.slow)
         for s in ("total", "layer", "filter") for n, kw in NORM_CASES]  # fmt: skip


@pytest.mark.parametrize("name,kw,sphere", CASES)
def test_every_sphere_optimizer_keeps_its_norms_over_1000_steps(name, kw, sphere):
    opt = sphere_optimizer(name, MASK, sphere=sphere, **kw)
    start = opt.prepare(params0())
    before = group_norms(start, sphere)
    p, _ = run(opt, start, 0.05, 1000, 0.5)
    np.testing.assert_allclose(group_norms(p, sphere), before, rtol=1e-5)
    np.testing.assert_array_equal(p["c"], start["c"])  # non-SI leaves are frozen
    assert not np.allclose(p["a"], start["a"])  # and it did move
    if sphere == "filter":  # every filter on the common radius sqrt(rho0**2 / F)
        rho0 = group_norms(params0(), "total")[0]
        np.testing.assert_allclose(before, rho0 / np.sqrt(5), rtol=1e-6)


def _flat(p):
    return np.concatenate([np.asarray(p["a"], np.float64).ravel(), np.asarray(p["b"]).ravel()])


def _unflat(v, like):
    a = v[:12].reshape(4, 3)
    return {"a": a, "b": v[12:].reshape(3, 2), "c": np.asarray(like["c"])}


def reference(name, p, grads, elr, momentum=0.9, b1=0.9, b2=0.999, exp=False):
    """The updates of the module docstring in float64 numpy, on the total sphere."""
    th = _flat(p)
    rho = np.linalg.norm(th)
    D = th.size
    m = np.zeros(D)
    v = np.zeros(D)

    def proj(x, t):
        return x - (x @ t) / (t @ t) * t

    def retract(t, step):
        if exp:
            n = np.linalg.norm(step)
            y = np.cos(n / rho) * t + np.sin(n / rho) * rho * step / n
        else:
            y = t + step
        return rho * y / np.linalg.norm(y)

    out = []
    for k, g in enumerate(grads, start=1):
        g = _flat(g)
        if name == "sgd":
            th = retract(th, -elr * rho**2 * g)
        elif name == "riemannian_sgd":
            th = retract(th, -elr * rho**2 * proj(g, th))
        elif name == "sphere_momentum":
            m = momentum * m + proj(g, th)
            th = retract(th, -elr * (1 - momentum) * rho**2 * m)
            m = proj(m, th)
        elif name == "sphere_adam":
            gt = proj(g, th)
            m, v = b1 * m + (1 - b1) * gt, b2 * v + (1 - b2) * gt**2
            d = (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + 1e-8)
            th = retract(th, -elr * rho / np.sqrt(D) * proj(d, th))
            m = proj(m, th)
        out.append(_unflat(th, p))
    return out


@pytest.mark.parametrize(
    "name,kw",
    [("sgd", {}), ("riemannian_sgd", {}), ("riemannian_sgd", {"retraction": "exp"}),
     ("sphere_momentum", {"momentum": 0.9}), ("sphere_adam", {})],
)  # fmt: skip
def test_each_optimizer_matches_its_closed_form_over_three_steps(name, kw):
    opt = sphere_optimizer(name, MASK, **kw)
    p = params0()
    state = opt.init(p, elr=0.02)
    grads = [jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 1)), p) for i in range(3)]
    want = reference(name, p, grads, 0.02, exp=kw.get("retraction") == "exp")
    q = p
    for i in range(3):
        u, state = opt.update(grads[i], state, q)
        q = jax.tree.map(lambda x, d: x + d, q, u)
        for k in ("a", "b"):
            np.testing.assert_allclose(q[k], want[i][k], rtol=2e-5, atol=2e-6, err_msg=f"{k}@{i}")


def _heo_projection(w, g, d, delta=0.1):
    """Heo et al.'s rule in numpy, filters on the last axis: the filter view, then the layer's."""
    W, G, D = (np.asarray(x, np.float64).reshape(-1, w.shape[-1]) for x in (w, g, d))
    cos_f = np.abs((W * G).sum(0)) / (np.linalg.norm(W, axis=0) * np.linalg.norm(G, axis=0) + 1e-8)
    if cos_f.max() < delta / np.sqrt(W.shape[0]):
        wn = W / np.linalg.norm(W, axis=0)
        return (D - wn * (wn * D).sum(0)).reshape(w.shape)
    cos_l = abs((W * G).sum()) / (np.linalg.norm(W) * np.linalg.norm(G) + 1e-8)
    if cos_l < delta / np.sqrt(W.size):
        wn = W / np.linalg.norm(W)
        return (D - wn * (wn * D).sum()).reshape(w.shape)
    return D.reshape(w.shape)


@pytest.mark.parametrize("name", ["sgdp", "adamp"])
def test_sgdp_and_adamp_match_their_closed_form_over_three_steps(name):
    """Per leaf, as Heo et al.: momentum (or Adam), the radial part removed when orthogonal."""
    p = params0()
    opt = sphere_optimizer(name, MASK, momentum=0.9)
    state = opt.init(p, elr=0.02)
    rho_sq = float(np.sum(_flat(p) ** 2))
    lr = 0.02 * (rho_sq if name == "sgdp" else np.sqrt(rho_sq / 18))
    # gradients orthogonal to each leaf (as for SI weights), plus a small radial part
    grads = []
    for i in range(3):
        g = {}
        for k in SHAPES:
            r = np.asarray(jax.random.normal(jax.random.key(10 + i), SHAPES[k]), np.float64)
            w = np.asarray(p[k], np.float64)
            g[k] = r - (r * w).sum() / (w * w).sum() * w + 1e-2 * w  # |cos| ~ 0.01: projected
        grads.append(g)
    want = {k: np.asarray(p[k], np.float64) for k in ("a", "b")}
    m = {k: np.zeros(SHAPES[k]) for k in ("a", "b")}
    v = {k: np.zeros(SHAPES[k]) for k in ("a", "b")}
    q = p
    for i, g in enumerate(grads, start=1):
        u, state = opt.update(jax.tree.map(jnp.asarray, g), state, q)
        q = jax.tree.map(lambda x, d: x + d, q, u)
        for k in ("a", "b"):
            if name == "sgdp":
                m[k] = 0.9 * m[k] + g[k]
                d = m[k]
            else:
                m[k] = 0.9 * m[k] + 0.1 * g[k]
                v[k] = 0.999 * v[k] + 0.001 * g[k] ** 2
                d = (m[k] / (1 - 0.9**i)) / (np.sqrt(v[k] / (1 - 0.999**i)) + 1e-8)
            want[k] = want[k] - lr * _heo_projection(want[k], g[k], d)
            np.testing.assert_allclose(q[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"{k}@{i}")
        np.testing.assert_array_equal(q["c"], p["c"])


def test_riemannian_sgd_and_projected_sgd_agree_to_second_order_in_the_elr():
    """On the non-SI toy loss the radial gradient part only shifts the step at O(elr**2)."""
    p = params0()
    g = jax.grad(loss)(p)
    diffs = []
    for elr in (4e-3, 2e-3, 1e-3):
        out = {}
        for name, kw in (("sgd", {}), ("rsgd", {}), ("rsgd_exp", {"retraction": "exp"})):
            opt = sphere_optimizer("sgd" if name == "sgd" else "riemannian_sgd", MASK, **kw)
            u, _ = opt.update(g, opt.init(p, elr=elr), p)
            out[name] = _flat(jax.tree.map(lambda x, d: x + d, p, u))
        step = np.linalg.norm(out["sgd"] - _flat(p))
        diffs.append([np.linalg.norm(out[k] - out["sgd"]) / step for k in ("rsgd", "rsgd_exp")])
    diffs = np.asarray(diffs)
    # the difference relative to the step is O(elr): it halves with the ELR (second order)
    np.testing.assert_allclose(diffs[1] / diffs[0], 0.5, atol=0.05)
    np.testing.assert_allclose(diffs[2] / diffs[1], 0.5, atol=0.05)
    assert (diffs < 0.1).all()


def test_sphere_momentum_with_beta_zero_is_riemannian_sgd():
    p = params0()
    for retraction in ("normalize", "exp"):
        a = sphere_optimizer("sphere_momentum", MASK, momentum=0.0, retraction=retraction)
        b = sphere_optimizer("riemannian_sgd", MASK, retraction=retraction)
        pa, _ = run(a, p, 0.05, 20, 0.5)
        pb, _ = run(b, p, 0.05, 20, 0.5)
        for k in SHAPES:
            np.testing.assert_allclose(pa[k], pb[k], rtol=1e-6, atol=1e-7)


def test_sgdp_removes_the_radial_part_only_when_weights_and_gradient_are_orthogonal():
    p = params0()
    opt = sphere_optimizer("sgdp", MASK, momentum=0.0)
    ortho = jax.tree.map(lambda x: x, p)  # a gradient orthogonal to each leaf: per-layer test
    t = p["a"].ravel()
    r = jax.random.normal(jax.random.key(3), t.shape)
    ortho["a"] = (r - (r @ t) / (t @ t) * t + 0.5 * t).reshape(4, 3)  # radial part 0.5
    # per-filter cosines of this gradient are large: the layer view may still apply
    u, _ = opt.update(ortho, opt.init(p, elr=1e-2), p)
    lr = 1e-2 * float(np.sum(_flat(p) ** 2))
    plain = -lr * np.asarray(ortho["a"])
    # not nearly orthogonal (cos ~ 0.5): no projection, the plain SGD step
    np.testing.assert_allclose(u["a"], plain, rtol=1e-5, atol=1e-7)
    tiny = dict(ortho, a=(r - (r @ t) / (t @ t) * t + 1e-6 * t).reshape(4, 3))
    u, _ = opt.update(tiny, opt.init(p, elr=1e-2), p)
    w = np.asarray(p["a"], np.float64)
    got = np.asarray(u["a"], np.float64) / -lr
    # orthogonal within delta/sqrt(dim) per layer: the update loses its radial part
    assert abs(np.sum(got * w)) / (np.linalg.norm(got) * np.linalg.norm(w)) < 1e-5


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_vmap_over_elr_equals_separate_runs(name):
    kw = {"momentum": 0.9} if name in ("sphere_momentum", "sgdp") else {}
    opt = sphere_optimizer(name, MASK, **kw)
    p = params0()
    elrs = jnp.asarray([1e-3, 1e-2, 5e-2])
    grid, _ = jax.vmap(lambda e: run(opt, p, e, 5, 0.5))(elrs)
    for i, e in enumerate(elrs):
        one, _ = run(opt, p, e, 5, 0.5)
        for k in SHAPES:
            np.testing.assert_allclose(grid[k][i], one[k], rtol=1e-5, atol=1e-6)


def test_sphere_optimizers_train_a_network_grid(tmp_path):
    """A sweep with sphere_momentum on per-filter spheres: every filter keeps its radius."""
    from three_regimes_jax import run_sweep
    from three_regimes_jax.engine.grid import member
    from three_regimes_jax.engine.stats import filter_stats

    cfg = Config.from_flat(dataset="digits", elrs=(1e-3, 1e-2), epochs=1, batch_size=64,
                           hidden=(16, 8), use_data_size=128, use_test_size=64,
                           optimizer="sphere_momentum", momentum=0.5, sphere="filter")  # fmt: skip
    res = run_sweep(cfg, progress=False)
    from three_regimes_jax.studies.run import make_trainer

    mask = make_trainer(cfg, 10, (8, 8, 1)).si_mask
    for i in range(2):
        ps = member(res.state, i).params
        rho = np.asarray(filter_stats(ps, ps, mask, 1.0).rho)
        np.testing.assert_allclose(rho, rho[0], rtol=1e-5)  # all filters on one radius
    assert np.isfinite(res.metrics["train_loss"]).all()
    assert (res.metrics["group_elr"][:, -1] > 0).all()


@pytest.mark.parametrize(
    "flags,match",
    [({"momentum": 0.9}, "sphere_momentum or sgdp"), ({"optimizer": "sgdp", "sphere": "layer"},
     "not on a sphere"), ({"betas": (0.8, 0.9)}, "sphere_adam or adamp"),
     ({"optimizer": "adamp", "betas": (0.9,)}, "beta1,beta2"), ({"retraction": "exp"},
     "riemannian_sgd"), ({"optimizer": "sphere_adam", "random_walk": True}, "--random-walk"),
     ({"train_mode": "whole", "lrs": (0.1,), "optimizer": "sphere_adam"}, "--train sphere only")],
)  # fmt: skip
def test_optimizer_flags_that_do_not_go_together_are_one_line(flags, match):
    with pytest.raises(UserError, match=match) as e:
        Config.from_flat(dataset="digits", **flags)
    assert "\n" not in str(e.value)


def test_on_sphere_list_is_the_fixed_sphere_optimizers():
    assert set(ON_SPHERE) == set(OPTIMIZERS) - {"sgdp", "adamp"}


def test_layer_and_filter_spheres_refuse_models_with_jointly_si_leaves():
    from three_regimes_jax.studies.run import make_trainer

    cfg = Config.from_flat(model="resnet18_si", width=2, dataset="digits", sphere="filter")
    with pytest.raises(UserError, match="only jointly") as e:
        make_trainer(cfg, 10, (8, 8, 1))
    assert "--sphere total" in str(e.value)
