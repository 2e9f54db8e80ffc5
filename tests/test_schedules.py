"""ELR schedules on the sphere (--elr-schedules): closed forms, one grid = separate runs."""

from __future__ import annotations

import numpy as np
import pytest

from three_regimes_jax import Config, run_sweep
from three_regimes_jax.elr_schedules import parse_schedule
from three_regimes_jax.engine.schedules import factor
from three_regimes_jax.errors import UserError

T = 10


def f(spec: str, t: float, elr: float = 0.1) -> float:
    kind, args = parse_schedule(spec, elr)
    return float(factor(kind, args, t, T))


@pytest.mark.parametrize(
    "spec,t,want",
    [("constant", 7.3, 1.0), ("cosine", 0.0, 1.0), ("cosine", 5.0, 0.5), ("cosine", 10.0, 0.0),
     ("cosine", 2.5, (1 + np.cos(np.pi / 4)) / 2), ("step:0.1@3+6", 2.9, 1.0),
     ("step:0.1@3+6", 3.0, 0.1), ("step:0.1@3+6", 6.5, 0.01), ("warmup:2", 0.5, 0.25),
     ("warmup:2", 3.0, 1.0), ("warmup_cosine:2", 1.0, 0.5), ("warmup_cosine:2", 6.0, 0.5),
     ("regime:1e-3@4", 3.99, 1.0), ("regime:1e-3@4", 4.0, 0.01)],
)  # fmt: skip
def test_each_schedule_matches_its_closed_form(spec, t, want):
    assert f(spec, t) == pytest.approx(want, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("spec", ["linear", "step:0.1", "step:-1@2", "warmup:0", "regime:1e-3",
                                  "cosine:3", "step:0.5@1+2+3+4+5"])  # fmt: skip
def test_bad_schedules_are_one_line(spec):
    with pytest.raises(UserError, match="bad ELR schedule") as e:
        Config.from_flat(dataset="digits", elr_schedules=(spec,))
    assert "\n" not in str(e.value)


BASE = dict(dataset="digits", elrs=(1e-2, 1e-1), epochs=3, batch_size=64, hidden=(16, 8),
            use_data_size=192, use_test_size=64, strategy="map")  # fmt: skip
SCHEDULES = ("constant", "cosine", "regime:1e-3@1")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("schedules") / "run"
    return out, run_sweep(
        Config.from_flat(**BASE, elr_schedules=SCHEDULES), out=out, progress=False
    )


def test_one_grid_of_schedules_equals_separate_runs(grid):
    """Members with different schedules share one compiled step: each equals its own run."""
    m = grid[1].metrics
    assert m["elr_schedule"].tolist() == [s for s in SCHEDULES for _ in range(2)]
    assert m["elr"].tolist() == [1e-2, 1e-1] * 3
    for k, spec in enumerate(SCHEDULES[1:], start=1):
        one = run_sweep(Config.from_flat(**BASE, elr_schedules=(spec,)), progress=False)
        for key in ("train_loss", "test_acc", "eff_grad_norm", "group_elr"):
            np.testing.assert_array_equal(m[key][2 * k : 2 * k + 2], one.metrics[key], key)


def test_a_constant_schedule_in_a_grid_is_the_plain_run(grid):
    plain = run_sweep(Config.from_flat(**BASE), progress=False)
    for key in ("train_loss", "test_acc", "eff_grad_norm", "step_cos"):
        np.testing.assert_array_equal(grid[1].metrics[key][:2], plain.metrics[key], key)
    # the regime member trains at its own ELR in epoch 1, then at 1e-3 (factor 0.1 / 0.01)
    ge = grid[1].metrics["group_elr"]  # [G, epochs + 1, groups]
    np.testing.assert_allclose(ge[4:, 1], ge[:2, 1], rtol=1e-6)
    ratio = ge[4:, 2:] / ge[:2, 2:]
    assert np.allclose(ratio[0], 0.1, rtol=0.3) and np.allclose(ratio[1], 0.01, rtol=0.3)


def test_schedules_need_the_sphere_and_a_sweep(tmp_path):
    with pytest.raises(UserError, match="--train sphere only"):
        Config.from_flat(
            dataset="digits", train_mode="whole", lrs=(0.1,), elr_schedules=("cosine",)
        )
    with pytest.raises(UserError, match="constant ELRs"):
        Config.from_flat(dataset="digits", random_walk=True, elr_schedules=("cosine",))
    with pytest.raises(UserError, match="fixed ELRs"):
        Config.from_flat(dataset="digits", elr_schedules=("cosine",), source=str(tmp_path))


def test_plots_show_one_run_per_schedule(grid, tmp_path):
    from plotting import run_plot
    from plotting.common import as_runs

    path = grid[0]
    runs = as_runs([path])
    assert [r.label for r in runs] == [f"run [{s}]" for s in SCHEDULES]
    for r, spec in zip(runs, SCHEDULES, strict=True):
        assert set(r.metrics["elr_schedule"].tolist()) == {spec} and r.elr.tolist() == [1e-2, 1e-1]
        assert r.metrics["train_loss"].shape[0] == 2 and r.epoch.size == 4
    files = run_plot([path], kind="overview", out=tmp_path / "fig")
    assert any(f.suffix == ".png" for f in files)
