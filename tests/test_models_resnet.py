"""ResNet18SI and its variants, the strided convolution's VJP, ConvNetSI(affine=True).

The architecture facts checked here come from the official PyTorch code
(``nets/resnet_si.py``, ``nets/resnet_si_af.py``, ``nets/resnet.py`` of
``tipt0p/periodic_behavior_bn_wd``).  Models are tiny (width 2, batch 4) and
each check compiles one program, so the file runs in about 10 s on 2 CPU cores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from three_regimes_jax.engine.models.convnet import ConvNetSI
from three_regimes_jax.engine.models.layers import FROZEN, conv2d, conv_fast_vjp
from three_regimes_jax.engine.models.resnet import ResNet18SI
from three_regimes_jax.engine.sphere import individually_si, si_group_names, si_sets, split_si

K = 2  # width of the test models
SHAPE = (32, 32, 3)
SCALE = 3.7
VARIANTS = {
    "resnet18_si": ResNet18SI(K),
    "resnet18_si_af": ResNet18SI(K, 10, 0.0, affine=True, train_last_layer=True),
    "resnet18": ResNet18SI(K, 10, 0.0, affine=True, train_last_layer=True, si_extras=False),
    "convnet_si_af": ConvNetSI(K, 3, 10, 0.0, True, affine=True),
}
CONV1 = [f"layer{j}_{b}/conv1/kernel" for j in range(1, 5) for b in range(2)]


def _path(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _abstract(model, shape=SHAPE):
    return jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((2, *shape)), train=False)
    )


def _official_convs(k: int) -> list[tuple[str, int, int, int]]:
    """``(name, kernel size, in, out)`` of every convolution of the official ResNet18SI."""
    convs = [("conv1", 3, 3, k)]
    cin = k
    for j, planes in enumerate((k, 2 * k, 4 * k, 8 * k), start=1):
        for b in range(2):
            convs += [(f"layer{j}_{b}/conv1", 3, cin, planes)]
            convs += [(f"layer{j}_{b}/conv2", 3, planes, planes)]
            if cin != planes:  # first block of stages 2-4: stride 2, 1x1 shortcut conv
                convs += [(f"layer{j}_{b}/shortcut", 1, cin, planes)]
            cin = planes
    return convs


@pytest.fixture(scope="module")
def points():
    """Per variant: the model, its boxed abstract params and variables at a random point.

    Kernels (SI or not, frozen head included) are drawn N(0, 1): the SI
    properties hold at any point.  BN scales are drawn ``1 + 0.2 N(0, 1)`` and
    biases ``0.2 N(0, 1)``: non-zero biases make the checks stricter, while
    channels that ReLU would zero almost everywhere (a variance near BN's
    epsilon, which breaks exact invariance) stay unlikely.
    """
    rng = np.random.default_rng(0)
    out = {}
    for name, model in VARIANTS.items():
        if name == "resnet18":  # the same function, with the bn1 sets declared too
            model = model.clone(bn_si=True)
        abstract = _abstract(model)

        def draw(path, a):
            z = rng.normal(size=a.shape)
            if not _path(path).endswith("kernel"):
                z = 0.2 * z + _path(path).endswith("scale")
            return jnp.asarray(z, jnp.float32)

        variables = {
            col: jax.tree_util.tree_map_with_path(draw, split_si(tree)[0])
            for col, tree in abstract.items()
        }
        out[name] = (model, abstract["params"], variables)
    return out


@pytest.fixture(scope="module")
def inits():
    """The real initial variables of the variants, less the conv kernels.

    One jitted init for all variants; returning no conv kernel lets XLA drop
    their random draws and the forward pass, whose compilation (seconds on CPU)
    these checks do not need.
    """
    x = jnp.zeros((2, *SHAPE))

    def keep(variables):
        def head_or_not_kernel(path, a):
            name = _path(path)
            head = "linear" in name or "FrozenDense" in name
            return a if head or not name.endswith("kernel") else None

        return jax.tree_util.tree_map_with_path(head_or_not_kernel, split_si(variables)[0])

    init = jax.jit(
        lambda key: {n: keep(m.init({"params": key}, x, train=False)) for n, m in VARIANTS.items()}
    )
    return init(jax.random.key(1))


def test_strided_conv_and_fast_vjp_match_lax():
    """PyTorch padding (K-1)//2 at strides 1, 2, kernels 1, 3, odd/even sizes; VJP = lax's."""
    rng = np.random.default_rng(3)
    cases = [(s, ks, h) for s in (1, 2) for ks in (1, 3) for h in (7, 8)]
    args = [
        tuple(
            jnp.asarray(rng.normal(size=shape), jnp.float32)
            for shape in ((2, h, h + 1, 3), (ks, ks, 3, 5))
        )
        for _, ks, h in cases
    ]

    def lax_conv(x, k, s):
        p = (k.shape[0] - 1) // 2
        return jax.lax.conv_general_dilated(
            x, k, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    @jax.jit
    def run(args):
        res = []
        for (s, _, _), (x, k) in zip(cases, args, strict=True):
            ref = lax_conv(x, k, s)
            dy = jnp.cos(jnp.arange(ref.size, dtype=jnp.float32)).reshape(ref.shape)
            grads = [
                jax.grad(lambda x, k, f=f, s=s, dy=dy: jnp.vdot(f(x, k, s), dy), (0, 1))(x, k)
                for f in (conv_fast_vjp, lax_conv)
            ]
            res.append((ref, conv_fast_vjp(x, k, s), conv2d(x, k, s), *grads))
        return res

    for (s, ks, h), (ref, fast, plain, g_fast, g_ref) in zip(cases, run(args), strict=True):
        assert ref.shape[1:3] == ((h - 1) // s + 1, h // s + 1), (s, ks, h)
        np.testing.assert_array_equal(fast, ref)
        np.testing.assert_array_equal(plain, ref)
        for a, b in zip(g_fast, g_ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=str((s, ks, h)))
    # JAX's "SAME" pads (0, 1) at stride 2: not PyTorch's convolution.
    x, k = args[cases.index((2, 3, 8))]
    same = jax.lax.conv_general_dilated(
        x, k, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    assert not np.allclose(same, conv2d(x, k, 2), atol=1e-3)


def test_resnet18_si_architecture_and_si_count():
    """20 SI kernels of the official shapes, 27k + 2724k^2 SI scalars, output [B, C]."""
    for k in (K, 64):
        params, mask = split_si(_abstract(ResNet18SI(k))["params"])
        leaves = dict(zip(si_group_names(mask), jax.tree.leaves(params), strict=True))
        convs = _official_convs(k)
        assert len(leaves) == len(convs) == 20
        assert {n: leaves[n + "/kernel"].shape for n, *_ in convs} == {
            n: (ks, ks, cin, cout) for n, ks, cin, cout in convs
        }
        n_si = sum(int(np.prod(a.shape)) for a in leaves.values())
        assert n_si == sum(ks * ks * cin * cout for _, ks, cin, cout in convs)
        assert n_si == 27 * k + 2724 * k * k
    # The conventional ResNet-18 (width 64) has the well-known 11,171,146 parameters.
    params = _abstract(VARIANTS["resnet18"].clone(width=64))["params"]
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(split_si(params)[0])) == 11_171_146
    model = VARIANTS["resnet18_si"]
    for shape in (SHAPE, (8, 8, 3)):
        abstract = _abstract(model, shape)
        variables = {**abstract, "params": split_si(abstract["params"])[0]}
        out = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True),
            variables,
            jax.ShapeDtypeStruct((4, *shape), jnp.float32),
        )
        assert out.shape == (4, 10)


def test_individually_si_sets():
    """conv1 kernels are SI alone; streams (and plain-ResNet bn1 affine pairs) jointly."""
    for name in ("resnet18_si", "resnet18_si_af", "resnet18"):
        boxed = _abstract(VARIANTS[name])["params"]
        names = si_group_names(split_si(boxed)[1])
        sets = si_sets(boxed)
        alone = [n for n, ind in zip(names, individually_si(sets), strict=True) if ind]
        assert alone == CONV1, name
        streams = {s: [n for n, t in zip(names, sets, strict=True) if t == s] for s in set(sets)}
        assert streams["stream2"] == [
            "layer2_0/conv2/kernel",
            "layer2_0/shortcut/kernel",
            "layer2_1/conv2/kernel",
        ]
        assert streams["stream1"] == [
            "conv1/kernel",
            "layer1_0/conv2/kernel",
            "layer1_1/conv2/kernel",
        ]
    # official check_si_name: ResNet18SIAf's SI params are its 20 kernels; ResNet18's
    # exclude layer4's conv2/shortcut (no BN after them) and add 5 bn1 (scale, bias).
    plain = si_sets(_abstract(VARIANTS["resnet18"])["params"])
    assert len(plain) == 17 and "stream4" not in plain
    plain = si_sets(_abstract(VARIANTS["resnet18"].clone(bn_si=True))["params"])
    assert len(plain) == 17 + 10 and plain.count("layer2_1/bn1") == 2
    assert len(si_sets(_abstract(VARIANTS["resnet18_si_af"])["params"])) == 20


def _scaled_outputs(model, boxed, variables, cases, x):
    """Train-mode outputs at the point and with each case's leaves scaled by SCALE."""
    names = si_group_names(split_si(boxed)[1])
    assert all(set(c) <= set(names) for c in cases)
    params = variables["params"]
    stacked = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.stack([a] + [a * SCALE if _path(p) in c else a for c in cases]),
        params,
    )

    def apply(p):
        return model.apply({**variables, "params": p}, x, train=True)

    @jax.jit
    def run(stacked):  # lax.map: one forward pass to compile, not a batched one
        return jax.lax.map(apply, stacked)

    out = np.asarray(run(stacked))
    return out[0], out[1:]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_scale_invariance_of_declared_sets(points, name):
    """Scaling every SI set (all together, each alone) keeps the logits; one member does not.

    The conventional ResNet-18 runs with ``bn_si=True``: its declared sets are
    those of the default (same function) plus the ``bn1`` (scale, bias) pairs.
    """
    model, boxed, variables = points[name]
    names = si_group_names(split_si(boxed)[1])
    sets = si_sets(boxed)
    groups: dict[str, list[str]] = {}
    for n, s in zip(names, sets, strict=True):
        groups.setdefault(n if s is None else s, []).append(n)
    invariant = [names, *groups.values()]
    breaking = [[g[0]] for g in groups.values() if len(g) > 1]
    if name.startswith("resnet"):
        assert len(breaking) == (4 if name != "resnet18" else 3 + 5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, *SHAPE)), jnp.float32)
    base, outs = _scaled_outputs(model, boxed, variables, invariant + breaking, x)
    assert base.shape == (4, 10)
    tol = 1e-4 * np.abs(base).max()
    for case, out in zip(invariant, outs[: len(invariant)], strict=True):
        np.testing.assert_allclose(out, base, rtol=1e-4, atol=tol, err_msg=str(case[:3]))
    for case, out in zip(breaking, outs[len(invariant) :], strict=True):
        assert np.abs(out - base).max() > 1e-2 * np.abs(base).max(), case


def test_affine_variants_init(inits):
    """BN scale 1 / bias 0 and a trainable PyTorch-init head; SI model: frozen norm-10 head."""
    si = inits["resnet18_si"]
    assert set(si[FROZEN]["linear"]) == {"kernel"}  # official: bias=False
    assert "linear" not in si["params"]
    np.testing.assert_allclose(np.linalg.norm(si[FROZEN]["linear"]["kernel"]), 10, rtol=1e-5)
    heads = {"resnet18_si_af": {"kernel"}, "resnet18": {"kernel", "bias"}}
    heads["convnet_si_af"] = {"kernel", "bias"}
    for name, keys in heads.items():
        variables = inits[name]
        assert FROZEN not in variables, name
        head = variables["params"]["linear" if name.startswith("resnet") else "FrozenDense_0"]
        assert set(head) == keys, name
        w = np.asarray(head["kernel"])
        bound = 1 / np.sqrt(w.shape[0])
        assert np.abs(w).max() <= bound
        expected = bound * np.sqrt(w.size / 3)  # E|w|^2 for U(-b, b)
        assert abs(np.linalg.norm(w) / expected - 1) < 0.3, name
        flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
        bn = {_path(p): np.asarray(a) for p, a in flat}
        bn = {n: a for n, a in bn.items() if n.endswith(("/scale", "/bias"))}
        bn = {n: a for n, a in bn.items() if "linear" not in n and "FrozenDense" not in n}
        n_bn = {"resnet18_si_af": 2 * 8 + 3 + 1, "resnet18": 2 * 8, "convnet_si_af": 4}[name]
        assert len(bn) == 2 * n_bn, name
        for n, a in bn.items():
            np.testing.assert_array_equal(a, 1.0 if n.endswith("scale") else 0.0, err_msg=n)
    # affine=False leaves ConvNetSI's variables as they were: 4 SI kernels, no BN params
    boxed = _abstract(ConvNetSI(K))
    assert set(boxed["params"]) == {f"SIConv_{i}" for i in range(4)}
    assert jax.tree.all(split_si(boxed["params"])[1])


def test_fast_vjp_gradients_match_plain_convolution(points):
    """ResNet18SI's gradients with the loop-friendly VJP equal JAX's own."""
    model, _, variables = points["resnet18_si"]
    x = jnp.asarray(np.random.default_rng(2).normal(size=(4, *SHAPE)), jnp.float32)

    @jax.jit
    def grads(params):
        def loss(p, m):
            return jnp.sum(jnp.sin(m.apply({**variables, "params": p}, x, train=True)))

        return [jax.grad(loss)(params, model.clone(fast_vjp=f)) for f in (True, False)]

    fast, plain = grads(variables["params"])
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), [("resnet18_si", "sphere"), ("resnet18", "whole")])
def test_resnet_sweep_end_to_end(tmp_path, name, mode):
    """A one-epoch sweep of each ResNet through the whole run driver (slow: ResNet compiles)."""
    from three_regimes_jax.config import Config
    from three_regimes_jax.storage.results import load_results
    from three_regimes_jax.studies.sweep import run_sweep

    train = {"elrs": (1e-3, 1e-2)} if mode == "sphere" else {}
    if mode == "whole":
        train = {"train_mode": "whole", "lrs": (0.01, 0.1), "momentum": 0.9}
        train |= {"weight_decays": (5e-4,), "schedule": "cosine"}
    cfg = Config.from_flat(
        model=name, width=2, dataset="digits", use_data_size=64, batch_size=32, epochs=1, **train
    )
    run_sweep(cfg, out=tmp_path / "r", progress=False)
    m = load_results(tmp_path / "r").metrics
    assert np.isfinite(m["train_loss"]).all() and m["train_loss"].shape == (2, 2)
    n_si = 20 if name == "resnet18_si" else 17
    assert len(m["group_names"]) == n_si
    assert m["group_individually_si"].sum() == 8
