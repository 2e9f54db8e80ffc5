"""three-regimes plan: the grid, memory, shards and wall time of a sweep, before running it."""

from __future__ import annotations

import pytest

from three_regimes_jax import Config
from three_regimes_jax.cli import main
from three_regimes_jax.errors import UserError
from three_regimes_jax.studies.plan import data_shape, plan_sweep

CFG = Config.from_flat(
    dataset="digits", elrs=(1e-3, 1e-2, 1e-1), seeds=(0, 1), epochs=10, batch_size=64,
    hidden=(32, 16), use_data_size=200, use_test_size=100,
)  # fmt: skip


def test_plan_counts_members_steps_shards_and_time():
    plan = plan_sweep(CFG, gpus=4, step_ms=2.0)
    assert (plan.members, plan.n_train, plan.n_test) == (6, 200, 100)
    assert plan.steps_per_epoch == 4  # ceil(200 / 64)
    assert plan.member_steps == 6 * 4 * 10
    assert plan.shards() == [
        "--shard 0/4 (1 member)", "--shard 1/4 (2 members)",
        "--shard 2/4 (1 member)", "--shard 3/4 (2 members)",
    ]  # fmt: skip
    # an epoch: 4 steps + 4 train-pass batches + 2 test batches at a third of a step
    assert plan.step_equivalents_per_epoch == pytest.approx(4 + 4 + 2 / 3)
    one = 6 * (4 + 4 + 2 / 3) * 10 * 2.0 / 1e3 / 3600
    assert plan.hours(1) == pytest.approx(one)
    assert plan.hours(4) == pytest.approx(one * 2 / 6)  # the largest shard has 2 members
    assert plan.member_bytes["total"] > plan.member_bytes["state"] > 0
    text = plan.text()
    assert "6 members of mlp_si on digits" in text and "on 4 device(s)" in text


def test_plan_times_a_short_run_or_uses_flops():
    timed = plan_sweep(CFG, time_steps=2)
    assert timed.step_ms > 0 and "timed here" in timed.step_source
    flops = plan_sweep(CFG, tflops=1e-3)  # 1 GFLOP/s
    assert flops.flops > 0 and flops.step_ms == pytest.approx(flops.flops / 1e9 * 1e3)


def test_data_shape_of_padded_and_text_datasets():
    conv = Config.from_flat(model="convnet_si", dataset="mnist", elrs=(1e-3,))
    assert data_shape(conv) == (60000, 10000, (32, 32, 1), 10)  # padded to 32 for ConvNetSI
    text = Config.from_flat(model="transformer", dataset="ag_news", elrs=(1e-3,), split_test=0.8)
    assert data_shape(text) == (6080, 1520, (64,), 4)


def test_plan_errors_are_one_line(capsys):
    with pytest.raises(UserError, match="one of --step-ms"):
        plan_sweep(CFG, step_ms=1.0, tflops=2.0)
    assert main(["plan", "--dataset", "digits", "--epochs", "2", "--gpus", "0"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["plan", "--experiment", "fig1", "--variant", "nope"]) == 2
    assert "no variant 'nope'" in capsys.readouterr().err


def test_plan_of_an_experiment_prints_each_sweep(capsys):
    assert main(["plan", "--experiment", "fig11", "--gpus", "8", "--step-ms", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count("grid: 24 members") == 3 and "resnet18_si on cifar10" in out
    assert "on 8 device(s)" in out
