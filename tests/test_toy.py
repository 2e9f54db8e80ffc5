"""Tests of the toy function, its closed-form theory and the ``toy`` command.

All theory checks use alpha = (1, 2, 4): threshold 1/7, so ELR 0.1 is below it
(regime 1), 0.2 above it (level (7 - 5)/2 = 1, eq. 9 ELRs (1.4, 0.7, 0.35)), and
0.5 far above it (F does not settle).  The simulations run once per module.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from matplotlib.figure import Figure

from plotting import toy as toy_plots
from three_regimes_jax.cli import parse_floats
from three_regimes_jax.errors import UserError
from three_regimes_jax.studies import toy
from three_regimes_jax.studies.toy_report import TOY_FILES, run_toy_command

ALPHAS = (1.0, 2.0, 4.0)
ELRS = (0.1, 0.2, 0.5)
STEPS = 2000
STARTS = 8

# Small shapes shared by the step-formula test and the command test (one compile).
SMALL_ELRS = (0.1, 0.5)
SMALL_STEPS = 3
SMALL_STARTS = 2


@pytest.fixture(scope="module")
def run() -> toy.ToyRun:
    """alpha = (1, 2, 4), ELR 0.1 / 0.2 / 0.5, 2000 steps, 8 random starts."""
    return toy.run_toy(ALPHAS, ELRS, STEPS, seed=0, starts=STARTS)


@pytest.fixture(scope="module")
def small_run() -> toy.ToyRun:
    return toy.run_toy(ALPHAS, SMALL_ELRS, SMALL_STEPS, seed=3, starts=SMALL_STARTS)


def _second_half(x: np.ndarray, axis: int) -> np.ndarray:
    t = x.shape[axis]
    return np.take(x, np.arange(t // 2, t), axis=axis)


# --------------------------------------------------------------------------- closed-form theory


def test_theory_values():
    assert toy.convergence_threshold(ALPHAS) == pytest.approx(1 / 7)
    assert toy.regime2_level(ALPHAS, 0.2) == pytest.approx(1.0)
    assert toy.regime2_level(ALPHAS, 0.1) == 0.0
    np.testing.assert_allclose(toy.equilibrium_group_elr(ALPHAS, 0.2), [1.4, 0.7, 0.35])
    assert [toy.predicted_regime(ALPHAS, e) for e in ELRS] == [1, 2, 2]
    # Prop. 1: the level is alpha * r2 / (1 + r2) with r2 = x^2 / y^2 on the 2-cycle.
    assert toy.single_group_level(2.0, 1.0) == pytest.approx(0.5)
    r2 = toy.single_group_r2(2.0, 1.0)
    assert r2 == pytest.approx(1 / 3)
    assert 2.0 * r2 / (1 + r2) == pytest.approx(0.5)
    assert toy.single_group_level(2.0, 0.4) == 0.0
    for alpha, elr in [(2.0, 1.0), (3.0, 0.7), (0.5, 10.0)]:
        assert toy.regime2_level([alpha], elr) == pytest.approx(toy.single_group_level(alpha, elr))


def test_toy_loss_forms_agree():
    theta = np.array([[0.6, 0.0], [0.0, 0.8], [0.3, 0.3]], np.float32)
    expected = 1.0 * 1.0 + 2.0 * 0.0 + 4.0 * 0.5
    assert float(toy.toy_loss(theta, ALPHAS)) == pytest.approx(expected)
    assert float(toy.toy_loss(tuple(theta), ALPHAS)) == pytest.approx(expected)


# --------------------------------------------------------------------------- simulation


def test_shapes_and_starts(run):
    e, s, t, n = len(ELRS), STARTS, STEPS, len(ALPHAS)
    assert run.loss.shape == (e, s, t)
    for arr in (run.group_elr, run.group_eff_grad_norm, run.group_ess):
        assert arr.shape == (e, s, t, n)
    assert run.final_params.shape == (e, s, n, 2)
    assert run.final_loss.shape == (e, s)
    np.testing.assert_allclose(np.linalg.norm(run.starts, axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(run.final_params, axis=(2, 3)), 1.0, rtol=1e-5)
    # Starts do not depend on how many are drawn; all ELRs share them (t = 0 is the start).
    np.testing.assert_array_equal(toy.random_starts(0, 1, n)[0], run.starts[0])
    np.testing.assert_allclose(run.loss[:, :, 0], run.loss[:1, :, 0].repeat(e, 0))
    # eq. 3 on every recorded state: sum_i 1 / elr_i = 1 / elr (radius 1).
    inv = np.sum(1.0 / run.group_elr, axis=-1)
    np.testing.assert_allclose(
        inv, np.broadcast_to(1.0 / np.array(ELRS)[:, None, None], inv.shape), rtol=1e-4
    )


def test_regime1_converges(run):
    """ELR 0.1 < 1/7: F < 1e-6 after 2000 steps, from every start."""
    assert np.all(run.final_loss[0] < 1e-6)
    assert np.all(run.loss[0, :, -1] < 1e-6)


def test_regime2_level_and_equilibrium_elrs(run):
    """ELR 0.2: mean F over the second half within 1% of 1.0; eq. 9 ELRs within 2%."""
    mean_f = _second_half(run.loss[1], axis=1).mean(axis=1)  # [S]
    np.testing.assert_allclose(mean_f, toy.regime2_level(ALPHAS, 0.2), rtol=0.01)
    mean_elr = _second_half(run.group_elr[1], axis=1).mean(axis=1)  # [S, n]
    expected = toy.equilibrium_group_elr(ALPHAS, 0.2)
    np.testing.assert_allclose(mean_elr, np.broadcast_to(expected, mean_elr.shape), rtol=0.02)
    # Settled: measured std / mean <= 0.006 over 128 starts.
    std_f = _second_half(run.loss[1], axis=1).std(axis=1)
    assert np.all(std_f < 0.05 * mean_f)


def test_high_elr_never_settles(run):
    """ELR 0.5: F stays far from 0 and keeps fluctuating.

    The bound: std over the second half > 10% of the predicted level (0.25).
    Measured over 128 starts (seeds 0 and 1): std in [0.47, 0.83], while at
    ELR 0.2 (settled) std / level <= 0.006, 17x below this bound.  The time
    average still follows the regime-2 level (sum(alpha) - 1/elr) / 2 = 2.5
    (measured within 2.4%), so F is nowhere near 0.
    """
    level = toy.regime2_level(ALPHAS, 0.5)
    half = _second_half(run.loss[2], axis=1)
    assert np.all(half.std(axis=1) > 0.1 * level)
    np.testing.assert_allclose(half.mean(axis=1), level, rtol=0.05)


def test_same_regime_for_all_starts(run):
    """ELR 0.1 converges, 0.2 settles and 0.5 fluctuates: regimes 1, 2, 2 from every start."""
    report = toy.classify_toy(run.loss, ALPHAS, ELRS)
    labels = [m["regime"] for m in report["members"]]  # ELR-major
    assert labels == [1] * STARTS + [2] * STARTS + [2] * STARTS
    assert [m["seed"] for m in report["members"][:STARTS]] == list(range(STARTS))


def test_prop1_single_group():
    """alpha = 2, ELR 1: F stabilises at (2 - 1)/2 = 0.5 on a 2-cycle x -> -x."""
    r = toy.run_toy([2.0], [1.0], STEPS, seed=0)
    np.testing.assert_allclose(r.loss[0, 0, -100:], 0.5, atol=1e-4)
    assert abs(r.final_loss[0, 0] - 0.5) < 1e-4
    x, y = r.final_params[0, 0, 0]
    assert x * x / (y * y) == pytest.approx(toy.single_group_r2(2.0, 1.0), abs=1e-4)
    assert toy.classify_toy(r.loss, [2.0], [1.0])["members"][0]["regime"] == 2


def _numpy_projected_gd(alphas, elr, theta, steps):
    """Closed-form projected GD in float64: gradient of F, step, rescale to norm 1."""
    a = np.asarray(alphas, np.float64)
    theta = np.asarray(theta, np.float64)
    losses, elrs = [], []
    for _ in range(steps):
        x, y = theta[:, 0], theta[:, 1]
        r2 = x * x + y * y
        losses.append(np.sum(a * x * x / r2))
        elrs.append(elr / r2)  # lr = elr on the unit sphere
        grad = np.stack([2 * a * x * y * y / r2**2, -2 * a * x * x * y / r2**2], axis=1)
        theta = theta - elr * grad
        theta = theta / np.linalg.norm(theta)
    return np.array(losses), np.array(elrs), theta


def test_matches_closed_form_step(small_run):
    """run_toy (float32, sphere_sgd) equals the float64 closed-form loop to ~30 float32 ulps.

    Measured: one step agrees to 1e-7 (float32 rounding); above the threshold the
    map amplifies that rounding step by step (chaotically at ELR 0.5: 1e-6 after
    5 steps, 4e-5 after 10), so the comparison runs 3 steps (max error 1.1e-6).
    """
    for e, elr in enumerate(SMALL_ELRS):
        for s in range(SMALL_STARTS):
            loss, g_elr, final = _numpy_projected_gd(ALPHAS, elr, small_run.starts[s], SMALL_STEPS)
            np.testing.assert_allclose(small_run.loss[e, s], loss, rtol=2e-6, atol=1e-7)
            np.testing.assert_allclose(small_run.group_elr[e, s], g_elr, rtol=2e-6)
            np.testing.assert_allclose(small_run.final_params[e, s], final, atol=2e-6)


def test_no_recompile(small_run):
    before = toy._simulate._cache_size()
    again = toy.run_toy(ALPHAS, SMALL_ELRS, SMALL_STEPS, seed=3, starts=SMALL_STARTS)
    assert toy._simulate._cache_size() == before
    np.testing.assert_array_equal(again.loss, small_run.loss)


def test_classify_toy_rule():
    """Synthetic trajectories (random level sum(alpha)/2 = 3.5, regime 3 from 0.9 x 3.5)."""
    t = np.arange(400)
    rng = np.random.default_rng(0)
    curves = [
        np.zeros(400),  # at the minimum
        np.exp(-t / 40.0),  # still decaying, median over the window ~6e-4
        np.full(400, 1.5),  # settled
        2.5 + rng.uniform(-1, 1, 400),  # chaotic around a level away from 3.5
        3.5 + rng.uniform(-1, 1, 400),  # chaotic around the random level
    ]
    elrs = [0.01, 0.02, 0.3, 0.5, 20.0]
    report = toy.classify_toy(np.stack(curves), ALPHAS, elrs)
    assert [m["regime"] for m in report["members"]] == [1, 1, 2, 2, 3]
    assert toy.toy_chance_loss(ALPHAS) == 3.5
    assert set(toy.REGIME_LABELS) == {1, 2, 3}
    with pytest.raises(UserError, match="toy loss must have shape"):
        toy.classify_toy(np.zeros((2, 10)), ALPHAS, [0.1])


# --------------------------------------------------------------------------- command


def test_command_writes_documented_files(small_run, tmp_path):
    out = tmp_path / "a" / "b"
    summary = run_toy_command(
        list(ALPHAS), list(SMALL_ELRS), SMALL_STEPS, 3, SMALL_STARTS, str(out)
    )
    assert sorted(os.listdir(out)) == sorted(TOY_FILES)  # data only: the library draws nothing
    paths = toy_plots.write_toy_figures(out)  # what the `toy` command does next
    assert [p.name for p in paths] == list(toy_plots.TOY_FIGURES)
    assert sorted(os.listdir(out)) == sorted(TOY_FILES + toy_plots.TOY_FIGURES)

    with open(out / "summary.json") as f:
        on_disk = json.load(f)
    assert on_disk == summary
    assert set(summary) == {
        "alphas",
        "elrs",
        "steps",
        "seed",
        "starts",
        "threshold",
        "regime_observed_codes",
        "files",
        "runs",
    }
    assert summary["threshold"] == pytest.approx(1 / 7)
    assert summary["files"] == list(TOY_FILES)
    assert summary["regime_observed_codes"] == {str(k): v for k, v in toy.REGIME_LABELS.items()}
    assert len(summary["runs"]) == len(SMALL_ELRS)
    run_keys = {
        "elr",
        "regime_theory",
        "regime_observed",
        "regime_observed_all_starts",
        "final_loss",
        "mean_loss_second_half",
        "predicted_level",
        "mean_group_elr_second_half",
        "equilibrium_group_elr",
    }
    for r, elr in zip(summary["runs"], SMALL_ELRS, strict=True):
        assert set(r) == run_keys
        assert r["elr"] == elr
        assert len(r["regime_observed_all_starts"]) == SMALL_STARTS
        assert r["regime_observed"] == r["regime_observed_all_starts"][0]
        assert set(r["regime_observed_all_starts"]) <= {1, 2, 3}
        assert len(r["mean_group_elr_second_half"]) == len(ALPHAS)
        assert r["final_loss"] == pytest.approx(
            float(small_run.final_loss[SMALL_ELRS.index(elr), 0])
        )
    assert summary["runs"][0]["regime_theory"] == 1
    assert summary["runs"][0]["predicted_level"] == 0.0
    assert summary["runs"][1]["predicted_level"] == pytest.approx(2.5)
    np.testing.assert_allclose(summary["runs"][1]["equilibrium_group_elr"], [3.5, 1.75, 0.875])

    with np.load(out / "toy.npz") as data:
        arrays = {k: data[k] for k in data.files}
    e, s, t, n = len(SMALL_ELRS), SMALL_STARTS, SMALL_STEPS, len(ALPHAS)
    shapes = {
        "alphas": (n,),
        "elr": (e,),
        "loss": (e, t),
        "group_elr": (e, t, n),
        "loss_all_starts": (e, s, t),
        "equilibrium_group_elr": (e, n),
        "predicted_level": (e,),
        "threshold": (),
    }
    assert {k: v.shape for k, v in arrays.items()} == shapes
    np.testing.assert_array_equal(arrays["loss"], small_run.loss[:, 0])
    np.testing.assert_array_equal(arrays["loss_all_starts"], small_run.loss)

    loss_fig, elr_fig = toy_plots.figures_from_npz(out / "toy.npz")
    assert isinstance(loss_fig, Figure) and isinstance(elr_fig, Figure)
    assert loss_fig.axes[0].get_legend().get_title().get_text() == "ELR"
    assert len(elr_fig.axes) == e * n
    for name in ("toy_loss.png", "toy_group_elr.png"):
        with open(out / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


BAD_INPUTS = [
    ("alphas", []),
    ("alphas", [1.0, 0.0]),
    ("alphas", [-1.0]),
    ("alphas", [1.0, float("nan")]),
    ("alphas", [float("inf")]),
    ("alphas", "abc"),
    ("elrs", []),
    ("elrs", [0.0]),
    ("elrs", [0.1, -0.2]),
    ("elrs", [float("nan")]),
    ("elrs", [float("inf")]),
    ("steps", 0),
    ("steps", 2.5),
    ("steps", True),
    ("starts", 0),
    ("seed", -1),
]


@pytest.mark.parametrize(("field", "value"), BAD_INPUTS)
def test_command_rejects_bad_input_and_creates_nothing(tmp_path, field, value):
    args = {"alphas": [1.0, 2.0], "elrs": [0.1], "steps": 10, "seed": 0, "starts": 1}
    args[field] = value
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        run_toy_command(out=str(out), **args)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_command_rejects_out_that_is_a_file(tmp_path):
    out = tmp_path / "file"
    out.write_text("x")
    with pytest.raises(UserError):
        run_toy_command([1.0], [0.1], 10, 0, 1, str(out))
    assert out.read_text() == "x"


def test_write_toy_figures_needs_a_toy_dir(tmp_path):
    with pytest.raises(UserError, match="toy.npz"):
        toy_plots.write_toy_figures(tmp_path)
    (tmp_path / "toy.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a toy.npz"):
        toy_plots.write_toy_figures(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["toy.npz"]


def test_parse_floats():
    assert parse_floats("1, 2,4", "--alphas") == [1.0, 2.0, 4.0]
    assert parse_floats("0.5", "--elrs") == [0.5]
    assert parse_floats(" ", "--alphas") == []  # emptiness is reported by the command
    for text in ["1,,2", "1,a", "1;2"]:
        with pytest.raises(UserError, match="--alphas"):
            parse_floats(text, "--alphas")
