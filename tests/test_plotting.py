"""Tests of the plotting package on tiny synthetic results written in the test session.

No training: results directories are written with ``write_results`` (a sweep
with regimes.json and a diverged member, a random-walk run, a fine-tune), an
interpolate file with ``write_npz`` and a toy directory with ``run_toy_command``.
Every kind is rendered once, to PNG and PDF, by ``run_plot`` in a subprocess
that also checks that plotting never loads JAX or pyplot.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.legend import Legend

import plotting
from plotting import common, style
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results, load_results, write_npz, write_results

ROOT = Path(__file__).resolve().parents[1]
ELRS = (1e-3, 1e-2, 1e-1, 1.0)
SEEDS = (0, 1)
T = 12
GROUPS = ("SIDense_0/kernel", "SIDense_1/kernel", "SIDense_2/kernel")
TRANSITIONS = {"1-2": [1e-3, 1e-2], "2-3": [1e-2, 1e-1]}


def _metrics(elrs, seeds, epochs, *, first_epoch=1, rng_seed=0, diverge=None):
    """Plausible per-epoch metrics: converging, equilibrating and random-walk-like members."""
    rng = np.random.default_rng(rng_seed)
    elr = np.repeat(np.asarray(elrs, np.float64), len(seeds))
    seed = np.tile(np.asarray(seeds, np.int64), len(elrs))
    g, n = elr.size, len(GROUPS)
    t = np.arange(first_epoch, first_epoch + epochs, dtype=np.float64)
    level = np.clip(np.log10(elr)[:, None] + 2.5, 0.0, None)  # 0 for small ELRs
    noise = 1.0 + 0.1 * rng.standard_normal((g, epochs))
    train_loss = (0.5 / t[None] ** 0.8 + 0.5 * level**2) * noise
    test_acc = np.clip(0.98 - 0.3 * level + 0.01 * rng.standard_normal((g, epochs)), 0.05, 1)
    eff = (5.0 / np.sqrt(elr))[:, None] * noise
    share = rng.uniform(0.5, 2.0, (g, 1, n))
    group_elr = (
        elr[:, None, None] * n * share / share.mean(-1, keepdims=True) * np.ones((1, epochs, 1))
    )
    group_gn = eff[..., None] / n / np.sqrt(share)
    m = {
        "elr": elr,
        "seed": seed,
        "epoch": t.astype(np.int64),
        "train_loss": train_loss.astype(np.float32),
        "train_acc": np.clip(1.0 - train_loss, 0, 1).astype(np.float32),
        "test_loss": (train_loss * 1.2).astype(np.float32),
        "test_acc": test_acc.astype(np.float32),
        "eff_grad_norm": eff.astype(np.float32),
        "si_norm": np.full((g, epochs), 11.5, np.float32),
        "adjacent_cos": np.clip(1.0 - 0.3 * level, -1, 1) * np.ones((1, epochs)),
        "step_cos": np.ones((g, epochs)),
        "group_ess_spread": rng.uniform(0, 0.1, (g, epochs)),
        "group_elr": group_elr.astype(np.float32),
        "group_eff_grad_norm": group_gn.astype(np.float32),
        "group_ess": (group_elr * group_gn).astype(np.float32),
        "group_names": np.asarray(GROUPS),
        "diverged": np.zeros(g, bool),
        "diverged_epoch": np.full(g, -1, np.int64),
    }
    if diverge is not None:
        member, at = diverge
        for k in ("train_loss", "test_loss", "test_acc", "eff_grad_norm", "group_elr"):
            m[k][member, at:] = np.nan
        m["diverged"][member] = True
        m["diverged_epoch"][member] = first_epoch + at
    return m


def _summary(m):
    rows = [
        {
            "elr": float(m["elr"][i]),
            "seed": int(m["seed"][i]),
            "train_loss": float(m["train_loss"][i, -1]),
            "test_acc": float(m["test_acc"][i, -1]),
            "eff_grad_norm": float(m["eff_grad_norm"][i, -1]),
            "diverged": bool(m["diverged"][i]),
        }
        for i in range(m["elr"].size)
    ]
    return {"members": rows, "seconds": 0.0}


def _config(elrs, seeds, epochs, **extra):
    return {
        "model": "mlp_si",
        "dataset": "digits",
        "elrs": list(elrs),
        "seeds": list(seeds),
        "epochs": epochs,
        "kind": "sweep",
        "format_version": 1,
        **extra,
    }


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """Paths of the synthetic inputs: sweep, rw, finetune (dirs), lc (.npz), toy (dir)."""
    from three_regimes_jax.studies.toy_report import run_toy_command

    base = tmp_path_factory.mktemp("plot_inputs")
    sweep = base / "sweep"
    m = _metrics(ELRS, SEEDS, T, diverge=(7, 8))  # ELR 1, seed 1 diverges at epoch 9
    write_results(sweep, _config(ELRS, SEEDS, T), m, _summary(m))
    members = [
        {
            "elr": float(e),
            "seed": int(s),
            "regime": 1 + min(i // 2, 2),
            "confidence": 0.9,
            "reason": "synthetic",
        }
        for i, (e, s) in enumerate(zip(m["elr"], m["seed"], strict=True))
    ]
    (sweep / "regimes.json").write_text(
        json.dumps({"members": members, "transitions": TRANSITIONS})
    )

    rw = base / "rw"
    m = _metrics((1e-1, 1.0), (0,), T, rng_seed=1)
    m["adjacent_cos"] = np.full_like(m["adjacent_cos"], 0.2)
    m["step_cos"] = np.full_like(m["step_cos"], 0.05)
    write_results(rw, _config((1e-1, 1.0), (0,), T, random_walk=True), m, _summary(m))

    ft = base / "finetune"
    m = _metrics((1e-3, 1e-2), (0,), 6, first_epoch=T + 1, rng_seed=2)
    m = {
        k: (np.concatenate([v, v]) if k not in ("epoch", "group_names") else v)
        for k, v in m.items()
    }
    for k in ("group_elr", "group_eff_grad_norm", "group_ess", "group_names"):
        del m[k]  # a run without per-group statistics: `all` skips its groups figure
    m["source_elr"] = np.repeat([1e-2, 1e-1], 2)
    m["source_epoch"] = np.full(4, T)
    m["source_member"] = np.repeat([2, 4], 2)
    cfg = {
        "kind": "finetune",
        "elrs": [1e-3, 1e-2],
        "epoch": T,
        "epochs": 6,
        "source_config": _config(ELRS, SEEDS, T),
    }
    write_results(ft, cfg, m, _summary(m))

    lc_file = base / "lc.npz"
    alpha = np.linspace(0, 1, 11)
    bump = np.sin(np.pi * alpha)[None]
    ends = np.array([[0.01, 0.05], [0.05, 0.3], [0.2, 0.2]])
    loss = ends[:, :1] * (1 - alpha) + ends[:, 1:] * alpha + 0.1 * bump
    write_npz(
        lc_file,
        {
            "alpha": alpha,
            "train_loss": loss,
            "train_acc": 1 - loss / 3,
            "test_loss": loss * 1.1,
            "test_acc": 0.9 - loss / 3,
            "barrier": loss.max(1) - ends.mean(1),
            "test_barrier": np.zeros(3),
            "a_elr": np.array([1e-3, 1e-2, 1e-2]),
            "b_elr": np.array([1e-2, 1e-1, 1e-2]),
            "a_source_elr": np.array([1e-3, 1e-2, 1e-2]),
            "b_source_elr": np.array([1e-2, 1e-1, 1e-2]),
            "a_seed": np.zeros(3, int),
            "b_seed": np.zeros(3, int),
            "a_epoch": np.array([12, 12, 5]),
            "b_epoch": np.array([12, 12, 10]),
        },
    )

    toy = base / "toy"
    run_toy_command([1, 2, 4], [0.1, 0.2, 0.5], 200, 0, 1, toy)
    return {"sweep": sweep, "rw": rw, "finetune": ft, "lc": lc_file, "toy": toy}


def _legend_titles(fig) -> list[str]:
    return [leg.get_title().get_text() for leg in fig.findobj(Legend)]


def _legend_texts(fig, title: str) -> list[str]:
    legs = [leg for leg in fig.findobj(Legend) if leg.get_title().get_text() == title]
    return [t.get_text() for leg in legs for t in leg.get_texts()]


# --------------------------------------------------------------------------- figures


def test_overview_scales_legends_and_overlay(inputs):
    fig = plotting.overview(inputs["sweep"])
    assert isinstance(fig.canvas, FigureCanvasAgg)
    axes = fig.axes
    assert [ax.get_yscale() for ax in axes] == ["log", "linear", "log"]
    assert {ax.get_xscale() for ax in axes} == {"linear"}
    assert "ELR" in _legend_titles(fig)
    assert _legend_texts(fig, "ELR") == ["0.001", "0.01", "0.1", "1"]
    assert "run" not in _legend_titles(fig)  # one run: no line-style legend
    assert len(axes[0].get_lines()) == len(ELRS) * len(SEEDS)

    # Fine-tunes over their source sweep: one line style per (run, source ELR).
    fig = plotting.overview([inputs["sweep"], inputs["finetune"]], epoch_scale="log")
    assert {ax.get_xscale() for ax in fig.axes} == {"log"}
    runs = _legend_texts(fig, "run")
    assert runs[0] == "sweep" and len(runs) == 3
    assert "finetune (from 0.01)" in runs and "finetune (from 0.1)" in runs
    styles = {line.get_linestyle() for line in fig.axes[0].get_lines()}
    assert len(styles) == 3
    with pytest.raises(UserError, match="epoch_scale"):
        plotting.overview(inputs["sweep"], epoch_scale="symlog")


def test_elr_colours_follow_a_rainbow_over_log_elr():
    pal = style.ElrPalette([1e-4, 1e-2, 1.0])
    # The middle ELR in log space gets the middle colour of the map.
    from matplotlib import colormaps

    np.testing.assert_allclose(pal(1e-2), colormaps["rainbow"](0.5), atol=0.01)
    assert pal(1e-4) != pal(1.0)
    assert pal(float("nan")) == (0.5, 0.5, 0.5, 1.0)


def test_diagram_log_log_with_start_stars(inputs):
    fig = plotting.diagram([inputs["sweep"], inputs["rw"]])
    ax_gn, ax_err = fig.axes
    assert (ax_gn.get_xscale(), ax_gn.get_yscale()) == ("log", "log")
    assert (ax_err.get_xscale(), ax_err.get_yscale()) == ("log", "linear")
    assert ax_gn.get_xlabel() == "train loss"
    stars = [ln for ln in ax_gn.get_lines() if ln.get_marker() == "*"]
    assert len(stars) == len(ELRS) * len(SEEDS) + 2
    r = load_results(inputs["sweep"])
    first = [(float(s.get_xdata()[0]), float(s.get_ydata()[0])) for s in stars[:2]]
    assert first[0] == pytest.approx(
        (r.metrics["train_loss"][0, 0], r.metrics["eff_grad_norm"][0, 0]), rel=1e-6
    )
    assert "ELR" in _legend_titles(fig)
    assert "start (first epoch)" in _legend_texts(fig, "run")


def test_scatter_draws_regime_borders_from_regimes_json(inputs):
    fig = plotting.scatter(inputs["sweep"])
    assert {ax.get_xscale() for ax in fig.axes} == {"log"}
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear", "log"]
    want = sorted(math.sqrt(lo * hi) for lo, hi in TRANSITIONS.values())
    for ax in fig.axes:
        borders = sorted(ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == "--")
        np.testing.assert_allclose(borders, want)
        assert len(ax.patches) == 2  # the shaded brackets
    labels = _legend_texts(fig, "regime")
    assert labels == ["1: convergence", "2: chaotic equilibrium", "3: divergence"]
    assert "diverged" in _legend_texts(fig, "run")
    # The diverged member is an 'x' at the top edge, not a point.
    xs = [c for c in fig.axes[0].collections if c.get_offsets().shape[0] == 1]
    assert xs


def test_scatter_without_classification_colours_by_elr(inputs):
    res = load_results(inputs["sweep"])  # in memory: no directory, so no classifier
    fig = plotting.scatter(res, last=3)
    assert "ELR" in _legend_titles(fig)
    assert not [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    # An explicit classification still draws borders.
    fig = plotting.scatter(res, regimes={"members": [], "transitions": {"1-2": [0.01, 0.1]}})
    assert [ln.get_xdata()[0] for ln in fig.axes[0].get_lines()] == [pytest.approx(0.1**1.5)]


def test_load_regimes_reads_json_and_rejects_bad_json(inputs, tmp_path):
    reg = plotting.load_regimes(inputs["sweep"])
    assert reg["transitions"] == TRANSITIONS
    assert plotting.load_regimes(None) is None
    (tmp_path / "regimes.json").write_text("{not json")
    with pytest.raises(UserError, match="regimes.json"):
        plotting.load_regimes(tmp_path)


def test_groups_equilibrium_panels_and_member_choice(inputs):
    fig = plotting.groups(inputs["sweep"], last=3)
    ax_eq, ax_ess, *panels = fig.axes
    assert (ax_eq.get_xscale(), ax_eq.get_yscale()) == ("log", "log")
    assert ax_ess.get_yscale() == "log"
    visible = [ax for ax in panels if ax.get_visible()]
    assert len(visible) == len(ELRS) * len(SEEDS)
    assert all(ax.get_yscale() == "log" for ax in visible)
    assert "ELR" in _legend_titles(fig) and "group" in _legend_titles(fig)
    # The equilibrium curve elr_i = ESS*/g_i, ESS* = the ESS of all SI parameters along
    # the trajectory: elr * its effective gradient norm (in these older results the
    # trajectory mean is eff_grad_norm), over the window (member 0).
    r = load_results(inputs["sweep"])
    ess_star = r.metrics["elr"][0] * r.metrics["eff_grad_norm"][0, -3:].astype(np.float64).mean()
    curve = [ln for ln in ax_eq.get_lines() if ln.get_linestyle() == "--"][0]
    np.testing.assert_allclose(curve.get_xdata() * curve.get_ydata(), ess_star, rtol=1e-6)

    fig = plotting.groups(inputs["sweep"], member="1e-2:1")
    panels = [ax for ax in fig.axes[2:] if ax.get_visible()]
    assert len(panels) == 1 and panels[0].get_title() == "ELR 0.01, seed 1"
    assert len(panels[0].get_lines()) == len(GROUPS) + 1  # groups + total ELR
    fig = plotting.groups(inputs["sweep"], member=(0.1, 0))
    assert len([ax for ax in fig.axes[2:] if ax.get_visible()]) == 1
    with pytest.raises(UserError, match="matches no member"):
        plotting.groups(inputs["sweep"], member=0.5)
    with pytest.raises(UserError, match="ELR:SEED"):
        plotting.groups(inputs["sweep"], member="fast")
    with pytest.raises(UserError, match="no per-group statistics"):
        plotting.groups(inputs["finetune"])


def test_lc_one_line_per_pair_with_barriers(inputs):
    fig = plotting.lc(inputs["lc"])
    ax_loss, ax_err = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_err.get_yscale() == "linear"
    assert len(ax_loss.get_lines()) == 3
    assert "ELR" in _legend_titles(fig)
    labels = _legend_texts(fig, "ELR")
    assert labels[0].startswith("0.001 → 0.01, barrier ")
    assert labels[2].startswith("0.01 @ep5 → 0.01 @ep10")
    with pytest.raises(UserError, match="not a `three-regimes interpolate` file"):
        plotting.lc(inputs["toy"] / "toy.npz")


def test_randomwalk_overlays_sgd_and_random_walk(inputs):
    fig = plotting.randomwalk([inputs["sweep"], inputs["rw"]])
    ax_loss, ax_cos = fig.axes
    assert ax_loss.get_yscale() == "log" and ax_cos.get_yscale() == "linear"
    assert {ln.get_linestyle() for ln in ax_cos.get_lines()} == {"-", "--"}
    # Fig. 24 shows the cosine between adjacent iterations (step_cos), not adjacent epochs.
    rw_y = [ln.get_ydata() for ln in ax_cos.get_lines() if ln.get_linestyle() == "--"]
    np.testing.assert_allclose(np.concatenate(rw_y), 0.05)
    assert "iterations" in ax_cos.get_ylabel()
    assert "ELR" in _legend_titles(fig)
    assert "rw (random walk)" in _legend_texts(fig, "run")
    with pytest.raises(UserError, match="random-walk"):
        plotting.randomwalk(inputs["sweep"])


def test_toy_figures_reuse_the_toy_module(inputs):
    loss_fig, elr_fig = plotting.toy_figures(inputs["toy"])
    assert loss_fig.axes[0].get_yscale() == "log"
    assert "ELR" in _legend_titles(loss_fig)
    assert len(elr_fig.axes) == 3 * 3


def test_run_info_reads_both_config_layouts_and_survives_bad_ones():
    flat = _config(ELRS, SEEDS, T, random_walk=True)
    assert common.run_info(flat) == common.RunInfo("mlp_si", "digits", True)
    nested = {
        "kind": "sweep",
        "format_version": 2,
        "model": {"name": "convnet_si"},
        "data": {"dataset": "cifar10"},
        "train": {"random_walk": True},
    }
    assert common.run_info(nested) == common.RunInfo("convnet_si", "cifar10", True)
    # A flat fine-tune names its model and dataset in its source's config.
    ft = {"kind": "finetune", "source": "runs/x", "source_config": _config(ELRS, SEEDS, T)}
    assert common.run_info(ft) == common.RunInfo("mlp_si", "digits", False)
    # Configs Config.from_dict refuses: read key by key, never an error.
    assert common.run_info({**nested, "train": {"random_walk": True, "bogus": 1}}) == (
        common.RunInfo("convnet_si", "cifar10", True)
    )
    assert common.run_info({"model": "mlp_si", "epochs": "many"}) == common.RunInfo(
        "mlp_si", None, False
    )
    future = {"format_version": 99, "model": {"name": "net"}, "data": {"dataset": "digits"}}
    assert common.run_info(future) == common.RunInfo("net", "digits", False)
    assert common.run_info([1, 2]) == common.RunInfo(None, None, False)
    run = common.Run(Results(config=nested, metrics={"elr": np.ones(1)}, summary={}), None, "x")
    assert run.random_walk and run.title() == "convnet_si on cifar10"


def test_save_figure_writes_png_and_pdf_atomically(tmp_path):
    fig = style.new_figure(3, 2)
    fig.add_subplot().plot([1, 2], [3, 4])
    paths = plotting.save_figure(fig, tmp_path / "new", "lc")
    assert [p.name for p in paths] == ["lc.png", "lc.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(os.listdir(tmp_path / "new")) == ["lc.pdf", "lc.png"]  # no temp files


# --------------------------------------------------------------------------- run_plot

_SCRIPT = """
import json, sys
import plotting
kind = sys.argv[3] if len(sys.argv) > 3 else "all"
paths = plotting.run_plot(json.loads(sys.argv[1]), kind=kind, out=sys.argv[2], member="1")
bad = sorted(m for m in sys.modules if m == "jax" or m.startswith(("jax.", "flax", "optax"))
             or m == "matplotlib.pyplot"
             or m.startswith(("three_regimes_jax.engine", "three_regimes_jax.studies")))
print(json.dumps({"paths": [str(p) for p in paths], "bad": bad}))
"""


def test_plotting_and_analysis_load_no_jax(inputs, tmp_path):
    """The cheap twin of the slow test below: one figure kind and a classification."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    script = _SCRIPT.replace("print(", "plotting.load_regimes(json.loads(sys.argv[1])[0]); print(")
    argv = [sys.executable, "-c", script, json.dumps([str(inputs["sweep"])]), str(tmp_path)]
    proc = subprocess.run([*argv, "overview"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["bad"] == [] and len(res["paths"]) == 2


@pytest.mark.slow
def test_run_plot_all_renders_every_kind_without_jax(inputs, tmp_path):
    ins = [str(inputs[k]) for k in ("sweep", "rw", "finetune", "lc", "toy")]
    out = tmp_path / "figs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(ins), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["bad"] == []
    names = {Path(p).name for p in res["paths"]}
    stems = [
        "overview",
        "diagram",
        "scatter",
        "lc",
        "randomwalk",
        "toy_loss",
        "toy_group_elr",
        "groups_sweep",
        "groups_rw",
    ]
    assert names == {f"{s}.{ext}" for s in stems for ext in ("png", "pdf")}
    for p in map(Path, res["paths"]):
        data = p.read_bytes()
        assert len(data) > 5000, p
        assert data[:5] == (b"%PDF-" if p.suffix == ".pdf" else b"\x89PNG\r")
    assert sorted(os.listdir(out)) == sorted(names)


def test_run_plot_default_out_and_single_kind(inputs):
    paths = plotting.run_plot([inputs["lc"]], kind="lc")
    assert paths == [
        inputs["lc"].parent / "figures" / "lc.png",
        inputs["lc"].parent / "figures" / "lc.pdf",
    ]
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((["missing_dir"], "all"), "does not exist"),
        ((["sweep"], "histogram"), "--kind must be one of"),
        ((["sweep"], "lc"), "--kind lc needs"),
        ((["sweep"], "randomwalk"), "--kind randomwalk needs"),
        ((["sweep"], "toy"), "--kind toy needs"),
        ((["lc"], "overview"), "--kind overview needs a results directory"),
        ((["config"], "all"), "is not a results directory"),
        (([], "all"), "no input"),
    ],
)
def test_run_plot_bad_input_writes_nothing(inputs, tmp_path, args, match):
    paths, kind = args
    real = {"sweep": inputs["sweep"], "lc": inputs["lc"], "config": inputs["sweep"] / "config.json"}
    paths = [str(real.get(p, tmp_path / p)) for p in paths]
    out = tmp_path / "out"
    with pytest.raises(UserError, match=match) as err:
        plotting.run_plot(paths, kind=kind, out=out)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_run_plot_unknown_member_or_bad_out_writes_nothing(inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="matches no member"):
        plotting.run_plot([inputs["sweep"]], kind="groups", out=out, member="3e-3")
    assert not out.exists()
    # With several runs, runs without the member are skipped (figures built, not rendered).
    from plotting.run import build_figures, sort_inputs

    inp = sort_inputs([inputs["sweep"], inputs["rw"]])
    assert [n for n, _ in build_figures(inp, ["groups"], member="1e-3")] == ["groups"]
    assert [n for n, _ in build_figures(inp, ["groups"], member=1.0)] == [
        "groups_sweep",
        "groups_rw",
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        plotting.run_plot([inputs["lc"]], kind="lc", out=blocker)


def test_all_diverged_run_still_draws(tmp_path):
    m = _metrics((1e-2, 1.0), (0,), 1)
    for k in ("train_loss", "test_loss", "test_acc", "eff_grad_norm", "group_elr", "group_ess"):
        m[k][:] = np.nan
    m["diverged"][:] = True
    write_results(tmp_path / "nan", _config((1e-2, 1.0), (0,), 1), m, _summary(m))
    for fn in (plotting.overview, plotting.diagram, plotting.scatter):
        fig = fn(tmp_path / "nan")
        fig.draw_without_rendering()  # log axes with no data get fixed limits instead of failing
        assert any(t.get_text() == "no finite data" for ax in fig.axes for t in ax.texts)


# --------------------------------------------------------------------------- results with epoch 0

FILTERS = (4, 6, 2)  # filters per group


def _new_format(m):
    """``m`` as written since issue 10: an epoch-0 entry (NaN step metrics), the
    trajectory mean ``eff_grad_norm_traj`` and per-filter statistics whose
    ``1/elr_f`` sum to their group's ``1/elr_i`` (eq. 3)."""
    g = m["elr"].size
    out = dict(m)
    for k, v in m.items():
        if np.ndim(v) >= 2 and k != "group_names":
            first = np.array(v[:, :1], np.float64)
            if k in ("step_cos", "group_elr", "group_eff_grad_norm", "group_ess", "adjacent_cos"):
                first[:] = np.nan
            else:
                first = first * 1.5  # a finite start, away from epoch 1
            out[k] = np.concatenate([first, v], axis=1)
    out["epoch"] = np.concatenate([[0], m["epoch"]])
    out["eff_grad_norm_traj"] = out["eff_grad_norm"] * 1.1
    rng = np.random.default_rng(3)
    elr_f, gn_f = [], []
    for i, nf in enumerate(FILTERS):
        share = rng.uniform(0.5, 2.0, (g, 1, nf))
        inv = 1.0 / m["group_elr"][..., i : i + 1] * share / share.sum(-1, keepdims=True)
        elr_f.append(1.0 / inv)
        gn_f.append(m["group_eff_grad_norm"][..., i : i + 1] / np.sqrt(nf) * share)
    nan0 = np.full((g, 1, sum(FILTERS)), np.nan)
    out["filter_elr"] = np.concatenate([nan0, np.concatenate(elr_f, -1)], 1)
    out["filter_eff_grad_norm"] = np.concatenate([nan0, np.concatenate(gn_f, -1)], 1)
    out["filter_ess"] = out["filter_elr"] * out["filter_eff_grad_norm"]
    return out


@pytest.fixture(scope="session")
def new_inputs(tmp_path_factory):
    """A sweep and a random-walk run in the results format with epoch 0 and filters."""
    base = tmp_path_factory.mktemp("plot_new")
    m = _new_format(_metrics(ELRS, SEEDS, T))
    write_results(base / "sweep", _config(ELRS, SEEDS, T), m, _summary(m))
    rw = _new_format(_metrics((1e-1, 1.0), (0,), T, rng_seed=1))
    rw["step_cos"][:, 1:] = 0.05
    write_results(base / "rw", _config((1e-1, 1.0), (0,), T, random_walk=True), rw, _summary(rw))
    return {"sweep": base / "sweep", "rw": base / "rw"}


def test_epoch_0_on_linear_and_log_axes_and_the_start_star(new_inputs):
    r = load_results(new_inputs["sweep"])
    fig = plotting.overview(new_inputs["sweep"])
    line = fig.axes[0].get_lines()[0]
    assert line.get_xdata()[0] == 0 and line.get_ydata()[0] == r.metrics["train_loss"][0, 0]
    # A log epoch axis cannot show 0: that point is left out (NaN x), epoch 1 on is drawn.
    fig = plotting.overview(new_inputs["sweep"], epoch_scale="log")
    x = np.asarray(fig.axes[0].get_lines()[0].get_xdata(), float)
    assert np.isnan(x[0]) and np.array_equal(x[1:], np.arange(1, T + 1))
    fig.draw_without_rendering()
    # The diagram's star is the initialization (epoch 0), and the legend says so.
    fig = plotting.diagram(new_inputs["sweep"])
    star = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "*"][0]
    assert (star.get_xdata()[0], star.get_ydata()[0]) == pytest.approx(
        (r.metrics["train_loss"][0, 0], r.metrics["eff_grad_norm"][0, 0])
    )
    assert "start (initialization, epoch 0)" in _legend_texts(fig, "run")
    # The random-walk figure: step_cos, NaN at epoch 0.
    fig = plotting.randomwalk([new_inputs["sweep"], new_inputs["rw"]], epoch_scale="log")
    rw_lines = [ln for ln in fig.axes[1].get_lines() if ln.get_linestyle() == "--"]
    assert np.isnan(rw_lines[0].get_ydata()[0]) and rw_lines[0].get_ydata()[-1] == 0.05
    # Scatter averages trained epochs only; the classifier leaves the start out.
    res = load_results(new_inputs["sweep"])
    fig = plotting.scatter(res, last=T + 5)
    ys = fig.axes[0].collections[0].get_offsets()[:, 1]
    want = np.nanmean(res.metrics["train_loss"][:, 1:], axis=1)
    np.testing.assert_allclose(sorted(ys), sorted(want[np.isfinite(want)]), rtol=1e-5)
    reg = plotting.load_regimes(new_inputs["sweep"])
    assert reg["criteria"]["start_entry"] is True


def test_filters_figure_equilibrium_layers_and_window(new_inputs, inputs):
    from plotting.filters import filter_layers, filter_window

    assert filter_window(1000) == 200 and filter_window(300) == 150 and filter_window(1) == 1
    assert filter_window(12, last=50) == 12
    with pytest.raises(UserError, match="last"):
        filter_window(10, last=0)
    r = load_results(new_inputs["sweep"])
    # The layers come back from eq. 3 when there is no filter_group array.
    layers = filter_layers(r.metrics)
    assert layers.tolist() == [i for i, nf in enumerate(FILTERS) for _ in range(nf)]
    assert filter_layers({**r.metrics, "filter_group": np.zeros(12, int)}).tolist() == [0] * 12

    fig = plotting.filters(new_inputs["sweep"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == len(ELRS) * len(SEEDS)
    assert all((ax.get_xscale(), ax.get_yscale()) == ("log", "log") for ax in visible)
    assert "last 6 epochs" in fig.get_suptitle()  # half of 12 trained epochs (< 200)
    assert _legend_texts(fig, "layer")[1:] == ["SIDense_0", "SIDense_1", "SIDense_2"]
    # The equilibrium curve elr_f = ESS*/g_f, ESS* = elr * eff_grad_norm_traj over the window.
    traj = r.metrics["eff_grad_norm_traj"][0, -6:].astype(np.float64).mean()
    curve = [ln for ln in visible[0].get_lines() if ln.get_linestyle() == "--"][0]
    np.testing.assert_allclose(
        curve.get_xdata() * curve.get_ydata(), r.metrics["elr"][0] * traj, rtol=1e-5
    )
    # Without a trajectory mean: ESS* = elr * sum_f g_f (eq. 3).
    bare = Results(
        config=r.config,
        metrics={k: v for k, v in r.metrics.items() if k != "eff_grad_norm_traj"},
        summary={},
    )
    curve = plotting.filters(bare, member="0.001:0").axes[0].get_lines()[0]
    gn = np.nanmean(r.metrics["filter_eff_grad_norm"][0, -6:].astype(np.float64), axis=0)
    np.testing.assert_allclose(
        curve.get_xdata() * curve.get_ydata(), r.metrics["elr"][0] * gn.sum(), rtol=1e-5
    )
    fig = plotting.filters(new_inputs["sweep"], member="0.01:1", last=3)
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 1
    assert "last 3 epochs" in " ".join(fig.get_suptitle().split())  # wrapped to the width
    with pytest.raises(UserError, match="per-filter"):
        plotting.filters(inputs["sweep"])


def test_run_plot_filters_kind(new_inputs, inputs, tmp_path):
    paths = plotting.run_plot([new_inputs["sweep"]], kind="filters", out=tmp_path / "f")
    assert [p.name for p in paths] == ["filters.png", "filters.pdf"]
    with pytest.raises(UserError, match="--kind filters needs per-filter"):
        plotting.run_plot([inputs["sweep"]], kind="filters", out=tmp_path / "g")
    from plotting.run import build_figures, sort_inputs

    inp = sort_inputs([new_inputs["sweep"], inputs["sweep"]])
    assert [n for n, _ in build_figures(inp, ["filters"], member="1e-3")] == ["filters"]


def test_sharpness_figure_plots_measures_at_the_sharpness_epochs(tmp_path):
    from plotting.sharpness import PANELS, has_sharpness, sharpness
    from three_regimes_jax.storage.results import write_results

    g, epochs = 2, np.arange(5)
    m = {"elr": np.array([1e-3, 1.0]), "seed": np.zeros(g, np.int64), "epoch": epochs}
    for k in ("train_loss", "test_acc", "eff_grad_norm", "si_norm"):
        m[k] = np.tile(np.linspace(2.0, 1.0, 5), (g, 1))
    m["sharpness_epoch"] = np.array([0, 2, 4])
    for k in ("grad_cov_trace", "fim_trace", "hessian_top_eig"):
        m[k] = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    cfg = {"format_version": 2, "kind": "sweep", "model": {"name": "mlp_si"}}
    write_results(tmp_path / "r", cfg, m, {"members": []})
    no_sharp = {**m, "sharpness_epoch": np.zeros(0, np.int64)}
    write_results(tmp_path / "n", cfg, no_sharp, {"members": []})
    run = plotting.common.as_runs([tmp_path / "r"])[0]
    assert has_sharpness(run) and not has_sharpness(plotting.common.as_runs([tmp_path / "n"])[0])
    fig = sharpness([tmp_path / "r"])
    axes = fig.axes[:3]
    assert [ax.get_xlabel() for ax in axes] == [p[2] for p in PANELS]
    x, y = axes[1].lines[2].get_data()  # member 1: its trajectory (after member 0's two lines)
    np.testing.assert_allclose(x, [10.0, 20.0, 30.0])  # FIM trace at epochs 0, 2, 4
    np.testing.assert_allclose(y, m["train_loss"][1, [0, 2, 4]])  # the loss at the same epochs
    with pytest.raises(UserError, match="--sharpness-every"):
        plotting.run_plot([tmp_path / "n"], kind="sharpness", out=tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_filtersteps_figure_draws_every_logged_filter(tmp_path):
    from plotting.steps import filter_steps
    from three_regimes_jax.storage.results import write_results

    m = {"elr": np.array([1e-3, 1e-2]), "seed": np.zeros(2, np.int64), "epoch": np.arange(3)}
    for k in ("train_loss", "test_acc", "eff_grad_norm", "si_norm"):
        m[k] = np.ones((2, 3))
    m["filter_log_step"] = np.array([10, 11, 12, 13])
    m["filter_log_member"] = np.array([1])
    m["filter_group"] = np.array([0, 0, 1])
    for i, k in enumerate(("filter_log_elr", "filter_log_eff_grad_norm", "filter_log_ess")):
        m[k] = np.full((1, 4, 3), i + 1.0)
    cfg = {"format_version": 2, "kind": "sweep", "model": {"name": "mlp_si"}}
    write_results(tmp_path / "r", cfg, m, {"members": []})
    fig = filter_steps(tmp_path / "r")
    assert [len(ax.lines) for ax in fig.axes[:3]] == [3, 3, 3]  # one line per filter
    x, y = fig.axes[1].lines[0].get_data()
    assert x.tolist() == [10, 11, 12, 13] and y.tolist() == [1.0] * 4  # the ELR panel
    assert "ELR 0.01" in fig.get_suptitle()
    with pytest.raises(UserError, match="was not logged"):
        filter_steps(tmp_path / "r", member="1e-3")
