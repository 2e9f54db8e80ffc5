"""SI models: architecture of the paper, PyTorch-matching init and BatchNorm, scale invariance."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from three_regimes_jax.engine.models import (
    FROZEN,
    BatchNorm,
    ModelVariables,
    build_model,
    init_model,
    si_mask_of,
)
from three_regimes_jax.engine.sphere import si_group_names
from three_regimes_jax.errors import UserError


def _at_random_si_point(model, shape):
    """init_model's frozen head and BN statistics; its SI kernels drawn N(0, 1) instead.

    SI properties hold at any point, and NumPy draws of init_model's shapes spare
    compiling the init's random kernels for every shape (seconds on CPU).
    """
    abstract = jax.eval_shape(
        lambda: init_model(model, jax.random.key(0), shape)._replace(si_mask=None)
    )
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), abstract.params)
    frozen, batch_stats = jax.jit(
        lambda k: (lambda v: (v.frozen, v.batch_stats))(init_model(model, k, shape))
    )(jax.random.key(0))
    return model, ModelVariables(params, batch_stats, frozen, si_mask_of(model, shape))


@pytest.fixture(scope="module")
def convnet():
    return _at_random_si_point(build_model("convnet_si", 10, width=4), (32, 32, 3))


@pytest.fixture(scope="module")
def small_mlp():
    return _at_random_si_point(build_model("mlp_si", 10, hidden=(16, 8)), (8, 8, 1))


def test_convnet_si_architecture(convnet):
    model, v = convnet
    shapes = {k: v.params[k]["kernel"].shape for k in v.params}
    assert shapes == {
        "SIConv_0": (3, 3, 3, 4),
        "SIConv_1": (3, 3, 4, 8),
        "SIConv_2": (3, 3, 8, 16),
        "SIConv_3": (3, 3, 16, 32),
    }
    assert all(jax.tree.leaves(v.si_mask))  # every trainable parameter is SI
    assert set(v.batch_stats) == {f"BatchNorm_{i}" for i in range(4)}
    head = v.frozen["FrozenDense_0"]
    assert head["kernel"].shape == (32, 10) and head["bias"].shape == (10,)
    np.testing.assert_allclose(np.linalg.norm(head["kernel"]), 10.0, rtol=1e-5)
    assert np.max(np.abs(head["bias"])) <= 1 / np.sqrt(32)
    x = jnp.ones((2, 32, 32, 3))
    variables = {"params": v.params, "batch_stats": v.batch_stats, FROZEN: v.frozen}
    out = jax.eval_shape(lambda: model.apply(variables, x, False))
    assert out.shape == (2, 10)


def test_mlp_si_architecture_and_pytorch_init():
    model = build_model("mlp_si", 10)
    v = init_model(model, jax.random.key(1), (28, 28, 1))
    assert si_group_names(v.si_mask) == ["SIDense_0/kernel", "SIDense_1/kernel"]
    w = np.asarray(v.params["SIDense_0"]["kernel"])
    assert w.shape == (784, 300) and v.params["SIDense_1"]["kernel"].shape == (300, 100)
    bound = 1 / np.sqrt(784)
    assert np.abs(w).max() <= bound
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.02)  # uniform(-b, b)
    assert "FrozenDense_0" not in v.params  # frozen layer lives outside the trainable tree
    trainable = init_model(
        build_model("mlp_si", 10, train_last_layer=True), jax.random.key(1), (8,)
    )
    assert trainable.si_mask["FrozenDense_0"] == {"bias": False, "kernel": False}
    assert trainable.frozen == {}


def test_batchnorm_matches_pytorch_semantics():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 5)) * 3 + 1, jnp.float32)
    bn = BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    y, upd = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    xn = np.asarray(x, np.float64)
    mean, var = xn.mean(0), xn.var(0)
    np.testing.assert_allclose(y, (xn - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    st = upd["batch_stats"]
    np.testing.assert_allclose(st["mean"], 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["var"], 0.9 + 0.1 * xn.var(0, ddof=1), rtol=1e-5)
    y_eval = bn.apply({"batch_stats": st}, x, train=False)
    np.testing.assert_allclose(
        y_eval, (xn - 0.1 * mean) / np.sqrt(st["var"] + 1e-5), rtol=1e-4, atol=1e-5
    )
    # train mode without a mutable collection leaves the running statistics alone
    y2 = bn.apply(variables, x, train=True)
    np.testing.assert_allclose(y2, y, rtol=1e-6)


@pytest.mark.parametrize("name", ["mlp_si", "convnet_si"])
def test_gradients_are_orthogonal_to_each_si_group(name, request):
    """SI in each group: <grad_i, theta_i> = 0 and the loss ignores per-group scaling."""
    model, v = request.getfixturevalue({"mlp_si": "small_mlp", "convnet_si": "convnet"}[name])
    shape = (8, 8, 1) if name == "mlp_si" else (32, 32, 3)
    n = 16
    x = jnp.asarray(np.random.default_rng(1).normal(size=(n, *shape)), jnp.float32)
    y = jnp.arange(n) % 10

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": v.batch_stats, FROZEN: v.frozen},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[jnp.arange(n), y])

    scaled = jax.tree.map(
        lambda p, s: p * s, v.params, {k: {"kernel": 3.7 + i} for i, k in enumerate(v.params)}
    )

    @jax.jit
    def check(params, scaled):
        g = jax.grad(loss)(params)
        cos = [
            jnp.vdot(pg, pp) / (jnp.linalg.norm(pg) * jnp.linalg.norm(pp))
            for pg, pp in zip(jax.tree.leaves(g), jax.tree.leaves(params), strict=True)
        ]
        return jnp.stack(cos), loss(scaled), loss(params)

    cos, at_scaled, at_params = check(v.params, scaled)
    assert cos.shape == (len(jax.tree.leaves(v.params)),)
    assert np.all(np.abs(np.asarray(cos)) < 1e-3), cos
    np.testing.assert_allclose(at_scaled, at_params, rtol=1e-4)


def test_bad_model_and_width():
    with pytest.raises(UserError, match="unknown model"):
        build_model("resnet", 10)
    with pytest.raises(UserError, match="width"):
        build_model("convnet_si", 10, width=0)


def test_fast_vjp_convolution_matches_xla_gradients():
    """The loop-friendly conv VJP gives the same values and gradients (also vmapped)."""
    from three_regimes_jax.engine.models.layers import _conv_same, conv_same_fast_vjp

    rng = np.random.default_rng(3)  # numpy: eager jax.random compiles a kernel per shape
    x, kernels, dy = (
        jnp.asarray(rng.normal(size=shape), jnp.float32)
        for shape in ((4, 8, 8, 3), (2, 3, 3, 3, 5), (4, 8, 8, 5))
    )

    def loss(conv):
        return lambda x, k: jnp.vdot(conv(x, k), dy)

    @jax.jit
    def both(x, kernels):
        grads = {
            conv: jax.vmap(jax.grad(loss(conv), (0, 1)), (None, 0))(x, kernels)
            for conv in (conv_same_fast_vjp, _conv_same)
        }
        values = conv_same_fast_vjp(x, kernels[0]), _conv_same(x, kernels[0])
        return grads[conv_same_fast_vjp], grads[_conv_same], values

    fast, ref, (value_fast, value_ref) = both(x, kernels)
    for a, b in zip(fast, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(value_fast, value_ref)
    # forward mode needs the plain convolution (what the sharpness measures use)
    with pytest.raises(TypeError):
        jax.jvp(lambda k: conv_same_fast_vjp(x, k), (kernels[0],), (kernels[1],))
    jax.eval_shape(lambda k: jax.jvp(lambda k: _conv_same(x, k), (k,), (kernels[1],)), kernels[0])


def test_every_registered_model_builds_from_a_config_with_its_default_width():
    from three_regimes_jax.config import MODEL_NAMES, Config
    from three_regimes_jax.engine.models import MODELS, build_model_from_config, si_sets_of

    assert MODELS == MODEL_NAMES
    widths = {"convnet_si": 32, "convnet_si_af": 32, "resnet18_si": 32, "resnet18_si_af": 32}
    widths["resnet18"] = 64
    for name in MODEL_NAMES:
        data = {"dataset": "ag_news"} if name == "transformer" else {}
        model = build_model_from_config(Config.from_flat(model=name, **data), 4)
        if name in widths:
            assert model.width == widths[name], name
    cfg = Config.from_flat(model="transformer", dataset="ag_news", vocab_size=50, max_len=7)
    model = build_model_from_config(cfg, 4)
    assert (model.vocab_size, model.max_len, model.num_classes) == (50, 7, 4)
    sets = si_sets_of(
        build_model_from_config(Config.from_flat(model="resnet18_si", width=2), 10), (32, 32, 3)
    )
    assert len(sets) == 20 and sets.count(None) == 8


def test_reshape_max_pool_matches_flax_max_pool():
    """Values equal ``nn.max_pool`` (VALID, odd sizes floored); gradients through a ReLU too."""
    from flax import linen as nn

    from three_regimes_jax.engine.models.convnet import _max_pool

    @functools.partial(jax.jit, static_argnums=2)
    def both(z, dy, k):
        pools = (
            lambda z: nn.max_pool(jax.nn.relu(z), (k, k), strides=(k, k)),
            lambda z: _max_pool(jax.nn.relu(z), k),
        )
        return [(p(z), jax.grad(lambda z, p=p: jnp.sum(p(z) * dy))(z)) for p in pools]

    rng = np.random.default_rng(0)
    for shape, k in (((4, 8, 8, 3), 2), ((2, 9, 7, 2), 2), ((2, 4, 4, 5), 4)):
        z = rng.standard_normal(shape).astype(np.float32)  # half negative: ReLU ties at 0
        dy = rng.standard_normal((shape[0], shape[1] // k, shape[2] // k, shape[3]))
        (y_ref, g_ref), (y, g) = both(z, dy.astype(np.float32), k)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(g, g_ref)
