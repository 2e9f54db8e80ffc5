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
from plot_data import (
    ELRS,
    GROUPS,
    ROOT,
    SEEDS,
    TRANSITIONS,
    T,
    _config,
    _legend_texts,
    _legend_titles,
    _metrics,
    _summary,
)

import plotting
from plotting import common, style
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results, load_results, write_results

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
