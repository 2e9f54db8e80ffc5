"""Plotting of results with epoch 0, per-filter, per-step and sharpness measurements."""

from __future__ import annotations

import numpy as np
import pytest
from plot_data import (
    ELRS,
    FILTERS,
    SEEDS,
    T,
    _legend_texts,
)

import plotting
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import Results, load_results


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
