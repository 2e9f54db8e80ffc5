"""Regime classification (analysis/); the transition search is tests/test_transitions.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from three_regimes_jax.analysis.regimes import (
    Criteria,
    classify,
    transition_brackets,
    trend_slope,
)
from three_regimes_jax.analysis.report import (
    REGIMES_FILE,
    classify_dir,
    num_classes_of,
    run_regimes_command,
)
from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.results import write_results

T = 40
EPOCH = np.arange(1, T + 1, dtype=np.float64)


def _curves(seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic [G, T] curves: 1/t decay, exponential decay, spiky 1/t, plateau, chance, NaN."""
    rng = np.random.default_rng(seed)
    power = 0.5 / EPOCH
    expo = np.maximum(np.exp(-EPOCH / 4.0), 1e-4)
    spiky = 0.05 / EPOCH
    spiky[[25, 33, 38]] *= 30.0  # regime-1 runs spike now and then
    plateau = 0.3 * np.exp(rng.normal(0, 0.3, T))
    plateau[:5] = [2.0, 1.0, 0.6, 0.4, 0.3]
    chance = 4.0 * np.exp(rng.normal(0, 0.2, T))
    nan = 0.5 / EPOCH
    nan[12:] = np.nan
    loss = np.stack([power, expo, spiky, plateau, chance, nan])
    acc = np.stack(
        [
            1 - 0.5 * power,
            1 - 0.5 * expo,
            np.full(T, 1.0),
            np.clip(0.9 + rng.normal(0, 0.02, T), 0, 1),
            np.clip(0.1 + rng.normal(0, 0.03, T), 0, 1),
            np.where(np.isfinite(nan), 0.9, np.nan),
        ]
    )
    g = loss.shape[0]
    return {
        "elr": np.array([1e-4, 3e-4, 1e-3, 1e-2, 1e-1, 1.0]),
        "seed": np.zeros(g, np.int64),
        "epoch": EPOCH.astype(np.int64),
        "train_loss": loss,
        "train_acc": acc,
        "test_loss": loss * 1.1,
        "test_acc": acc * 0.98,
        "diverged": ~np.all(np.isfinite(loss), axis=1),
        "diverged_epoch": np.array([-1, -1, -1, -1, -1, 13]),
    }


def _check_report(report: dict, g: int) -> None:
    """The regimes.json form, key by key and type by type."""
    assert set(report) == {"members", "transitions", "midpoints", "criteria"}
    assert len(report["members"]) == g
    for m in report["members"]:
        assert set(m) == {"elr", "seed", "regime", "confidence", "reason"}
        assert isinstance(m["elr"], float) and isinstance(m["seed"], int)
        assert m["regime"] in (1, 2, 3) and isinstance(m["regime"], int)
        assert isinstance(m["confidence"], float) and 0.0 <= m["confidence"] <= 1.0
        assert isinstance(m["reason"], str) and m["reason"]
    for key in ("transitions", "midpoints"):
        assert set(report[key]) == {"1-2", "2-3"}
    for b in report["transitions"].values():
        assert b is None or (len(b) == 2 and all(isinstance(v, float) for v in b) and b[0] < b[1])
    for mid in report["midpoints"].values():
        assert mid is None or isinstance(mid, float)
    assert set(Criteria().to_dict()) <= set(report["criteria"])
    json.dumps(report, allow_nan=False)  # strictly JSON-able


def test_synthetic_curves():
    m = _curves()
    report = classify(m, num_classes=10)
    _check_report(report, 6)
    labels = [r["regime"] for r in report["members"]]
    assert labels == [1, 1, 1, 2, 3, 3], [r["reason"] for r in report["members"]]
    assert "non-finite" in report["members"][5]["reason"]
    assert "13" in report["members"][5]["reason"]
    assert report["members"][5]["confidence"] == 1.0
    assert "chance" in report["members"][4]["reason"]
    assert report["transitions"] == {"1-2": [1e-3, 1e-2], "2-3": [1e-2, 1e-1]}
    assert math.isclose(report["midpoints"]["1-2"], math.sqrt(1e-5))
    # Without accuracies the loss level alone never decides regime 3 (issue 10: with
    # the frozen norm-10 head ln C is no random-guess level); a random-walk-like
    # step cosine does, with the loss as support.
    no_acc = {k: v for k, v in m.items() if k != "train_acc"}
    rep = classify(no_acc, num_classes=10)["members"]
    assert [r["regime"] for r in rep] == [1, 1, 1, 2, 2, 3]
    assert rep[4]["confidence"] <= 0.5
    no_acc["step_cos"] = np.stack([np.full(T, v) for v in (1.0, 1.0, 1.0, 0.97, 0.01, 1.0)])
    assert [r["regime"] for r in classify(no_acc, num_classes=10)["members"]] == labels


def test_confidence_is_margin_based():
    m = _curves()
    base = classify(m, num_classes=10)["members"]
    # Regime 1 just under low_loss is less confident than far under it.
    near = dict(m, train_loss=m["train_loss"].copy())
    near["train_loss"][0] = 0.9 / EPOCH  # median over the window ~0.03
    close = classify(near, num_classes=10)["members"][0]
    assert close["regime"] == 1 and close["confidence"] < base[0]["confidence"]
    # Regime 3 by accuracy just under the threshold (chance 0.1 + margin 0.2).
    near["train_acc"][4] = np.full(T, 0.29)
    near["train_loss"][4] = np.full(T, 1.0)
    weak = classify(near, num_classes=10)["members"][4]
    assert weak["regime"] == 3 and weak["confidence"] < 0.2 < base[4]["confidence"]
    # Moving a threshold onto the statistic drives the confidence towards 0.
    crit = Criteria(chance_margin=0.8)
    assert classify(m, num_classes=10, criteria=crit)["members"][3]["confidence"] < 0.3


def test_random_walk_reference_and_no_chance_info():
    m = _curves()
    m["adjacent_cos"] = np.stack([np.full(T, v) for v in (1.0, 1.0, 1.0, 0.8, 0.02, 0.9)])
    rw = {"elr": m["elr"], "seed": m["seed"], "adjacent_cos": np.full((6, T), 0.75)}
    report = classify(m, num_classes=10, random_walk=rw)
    # The chance member decorrelates like the random walk: regime 3, both tests named.
    assert report["members"][4]["regime"] == 3
    assert "random walk" in report["members"][4]["reason"]
    assert "chance" in report["members"][4]["reason"]
    # The plateau member's weights decorrelate like the random walk's too, but its
    # accuracy (0.9) is far above chance: a cosine alone never makes regime 3 (this
    # member was labelled 3 before issue 10).
    assert report["members"][3]["regime"] == 2
    assert "not a random walk" in report["members"][3]["reason"]
    assert report["criteria"]["random_walk_reference"] is True
    # A chance-level member whose weights stay correlated (cosine far above the
    # random walk's) is not a random walk either.
    m["adjacent_cos"][4] = 0.98
    assert classify(m, num_classes=10, random_walk=rw)["members"][4]["regime"] == 2
    # Without num_classes/chance_loss no chance test runs; "not 3" gets 0.5 at most.
    bare = classify({"train_loss": m["train_loss"][:4], "elr": m["elr"][:4]})
    assert [r["regime"] for r in bare["members"]] == [1, 1, 1, 2]
    assert all(r["confidence"] <= 0.5 for r in bare["members"])


def test_undertrained_run_is_not_a_random_walk():
    # A short run at a small ELR starts above chance loss (frozen last layer) and
    # falls steadily: the chance tests are vetoed and it is still converging (1);
    # a noisy one at that level is 3.
    m = {
        "elr": np.array([1e-3, 1.0]),
        "train_loss": np.array([[2.9, 2.4, 2.1, 1.9], [2.9, 3.4, 2.6, 3.1]]),
        "train_acc": np.array([[0.1, 0.12, 0.15, 0.18], [0.1, 0.12, 0.09, 0.1]]),
    }
    a, b = classify(m, num_classes=10)["members"]
    assert a["regime"] == 1 and "still converging" in a["reason"]
    assert "not a random walk" in a["reason"] and a["confidence"] <= 0.25
    assert b["regime"] == 3


# --------------------------------------------------------------------------- regime 3 (issue 10)


def _convnet_like(seed: int = 0) -> dict[str, np.ndarray]:
    """ConvNet-on-CIFAR-10-like window levels: a frozen norm-10 head puts the random-guess
    loss near 10, far above ln 10; high regime-2 ELRs sit at losses of 1-2.5.

    Members (loss, train acc, step cosine): regime 2 at (2, 0.45, 0.97) and at
    (2.5, 0.45, 0.97); regime 2 with an accuracy near chance but correlated steps
    (2.5, 0.25, 0.95); the random-walk-like state (10, 0.1, 0.01); a regime-3 run
    near the border (5, 0.15, 0.1).
    """
    rng = np.random.default_rng(seed)
    levels = [(2.0, 0.45, 0.97), (2.5, 0.45, 0.97), (2.5, 0.25, 0.95), (10, 0.1, 0.01)]
    levels.append((5.0, 0.15, 0.1))

    def noisy(level, rel, lo, hi):
        return np.clip(level * (1.0 + rel * rng.standard_normal(T)), lo, hi)

    return {
        "elr": np.array([0.03, 0.05, 0.1, 1.0, 0.3]),
        "epoch": EPOCH,
        "train_loss": np.stack([noisy(x, 0.1, 0, None) for x, _, _ in levels]),
        "train_acc": np.stack([noisy(a, 0.1, 0, 1) for _, a, _ in levels]),
        "step_cos": np.stack([noisy(c, 0.01 if c > 0.5 else 0.5, -1, 1) for _, _, c in levels]),
    }


def test_regime_3_needs_chance_accuracy_not_a_high_loss():
    m = _convnet_like()
    rep = classify(m, num_classes=10)["members"]
    assert [r["regime"] for r in rep] == [2, 2, 2, 3, 3], [r["reason"] for r in rep]
    assert all(r["confidence"] > 0.5 for r in rep)
    # Loss 2.5 >= 0.9 ln 10 (the rule before issue 10 said 3), accuracy far above chance.
    assert "not a random walk" in rep[1]["reason"] and "above chance" in rep[1]["reason"]
    # Accuracy near chance, yet correlated steps: the cosine keeps it out of regime 3.
    assert "step cosine 0.9" in rep[2]["reason"] and "not a random walk" in rep[2]["reason"]
    assert "step cosine" in rep[3]["reason"] and "~ chance" in rep[3]["reason"]
    assert rep[3]["confidence"] > 0.7
    # With a random-walk reference run (App. M) the step cosine must also be near its.
    rw = {"elr": m["elr"], "step_cos": np.full((5, T), 0.02)}
    rep = classify(m, num_classes=10, random_walk=rw)["members"]
    assert [r["regime"] for r in rep] == [2, 2, 2, 3, 3]
    assert "random walk 0.02" in rep[3]["reason"]
    # The border run's steps (cosine 0.1) are less decorrelated than the reference's + 0.02.
    tight = classify(m, num_classes=10, random_walk=rw, criteria=Criteria(cos_margin=0.02))
    assert [r["regime"] for r in tight["members"]] == [2, 2, 2, 3, 2]
    # A random walk at a loss below the random-guess level is still regime 3, less sure.
    low = dict(m, train_loss=m["train_loss"].copy())
    low["train_loss"][3] = 1.5
    r3 = classify(low, num_classes=10)["members"][3]
    base = classify(m, num_classes=10)["members"][3]
    assert r3["regime"] == 3 and r3["confidence"] < base["confidence"]
    assert "yet mean train loss" in r3["reason"]


def _with_start(m: dict, first_epoch: int = 0) -> dict:
    """``m`` as written since issue 10: a start entry, NaN in the step arrays."""
    out = dict(m)
    for k in ("train_loss", "train_acc", "step_cos", "adjacent_cos"):
        if k in m:
            first = np.full((m[k].shape[0], 1), np.nan)
            if k == "train_loss":
                first[:] = 2.9  # finite at the start
            elif k == "train_acc":
                first[:] = 0.1
            out[k] = np.concatenate([first, m[k]], axis=1)
    t = next(np.shape(v)[1] for v in m.values() if np.ndim(v) == 2)
    out["epoch"] = np.arange(first_epoch, first_epoch + t + 1)
    return out


def test_start_entry_is_left_out():
    m = _curves()
    m["step_cos"] = np.stack([np.full(T, v) for v in (1.0, 1.0, 1.0, 0.97, 0.01, 1.0)])
    m["adjacent_cos"] = np.full((6, T), 0.5)
    want = classify(m, num_classes=10)
    for first in (0, 100):  # a sweep, a fine-tune from epoch 100 (found by its NaN steps)
        new = _with_start(m, first)
        if first:
            new["epoch"] = new["epoch"].copy()
        got = classify(new, num_classes=10)
        assert got["criteria"]["start_entry"] is True
        assert [r["regime"] for r in got["members"]] == [r["regime"] for r in want["members"]]
        if first == 0:  # same trained epochs, so the same statistics
            assert got["members"] == want["members"]
    assert want["criteria"]["start_entry"] is False
    # A zero loss at the start does not reach a log: the trend skips epoch 0.
    z = _with_start(m)
    z["train_loss"][:, 0] = 0.0
    assert [r["regime"] for r in classify(z, num_classes=10)["members"]] == [1, 1, 1, 2, 3, 3]
    # The random-walk reference's start entry is left out too.
    rw = _with_start({"elr": m["elr"], "step_cos": np.full((6, T), 0.02)})
    rw["eff_grad_norm_traj"] = rw["step_cos"]  # the new format: always a start entry
    del rw["epoch"]
    rep = classify(m, num_classes=10, random_walk=rw)["members"]
    assert "random walk 0.02" in rep[4]["reason"]
    # Only the start, no trained epoch: a clear error.
    with pytest.raises(UserError, match="only the start"):
        classify(
            {
                k: v[:, :1] if k != "elr" else v
                for k, v in _with_start(m).items()
                if k in ("elr", "train_loss", "step_cos")
            }
        )


def test_start_offset_of_old_and_new_results():
    from three_regimes_jax.analysis.stats import start_offset

    loss = np.ones((2, 3))
    assert start_offset({"train_loss": loss, "epoch": np.arange(1, 4)}) == 0
    assert start_offset({"train_loss": loss, "epoch": np.arange(0, 3)}) == 1
    steps = np.ones((2, 3))
    steps[:, 0] = np.nan
    assert start_offset({"train_loss": loss, "epoch": np.arange(5, 8), "step_cos": steps}) == 1
    # A member that diverged in its first epoch has NaN steps and loss: not a start entry.
    nan_loss = loss.copy()
    nan_loss[:, 0] = np.nan
    assert start_offset({"train_loss": nan_loss, "step_cos": steps}) == 0
    assert start_offset({"train_loss": loss, "eff_grad_norm_traj": loss}) == 1
    assert start_offset({"train_loss": loss, "step_cos": np.ones((2, 3))}) == 0


def test_trend_slope():
    t = np.arange(10, 41, dtype=float)
    assert trend_slope(t, 3.0 / t) == pytest.approx(-1.0, abs=0.02)
    assert trend_slope(t, np.full(t.size, 0.2)) == pytest.approx(0.0, abs=1e-9)
    spiky = 3.0 / t**2
    spiky[[5, 20, 28]] *= 50
    assert trend_slope(t, spiky) == pytest.approx(-2.0, abs=0.1)
    assert math.isnan(trend_slope([1.0], [0.5]))


def test_transition_brackets():
    elrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    r = transition_brackets(elrs, [1, 1, 2, 3, 3])
    assert r["transitions"] == {"1-2": [1e-3, 1e-2], "2-3": [1e-2, 1e-1]}
    assert math.isclose(r["midpoints"]["2-3"], math.sqrt(1e-3))
    # Unsorted input, two seeds that disagree: the union, midpoint = geometric mean.
    r = transition_brackets(
        [1e-2, 1e-3, 1e-4, 1e-3, 1e-2, 1e-4], [2, 1, 1, 2, 2, 1], [0, 0, 0, 1, 1, 1]
    )
    assert r["transitions"]["1-2"] == [1e-4, 1e-2]
    assert math.isclose(r["midpoints"]["1-2"], math.sqrt(math.sqrt(1e-5 * 1e-7)))
    assert r["transitions"]["2-3"] is None and r["midpoints"]["2-3"] is None
    # Non-monotone labels widen the bracket; a direct 1 -> 3 jump brackets both borders.
    r = transition_brackets(elrs, [1, 2, 1, 2, 2])
    assert r["transitions"]["1-2"] == [1e-4, 1e-1]
    r = transition_brackets(elrs, [1, 1, 3, 3, 3])
    assert r["transitions"] == {"1-2": [1e-3, 1e-2], "2-3": [1e-3, 1e-2]}
    assert transition_brackets(elrs, [2] * 5)["transitions"] == {"1-2": None, "2-3": None}
    with pytest.raises(UserError):
        transition_brackets(elrs, [1, 2, 4, 3, 3])


def test_criteria_validation():
    with pytest.raises(UserError, match="last_frac"):
        Criteria(last_frac=0)
    with pytest.raises(UserError, match="falling_slope"):
        Criteria(falling_slope=0.1)
    with pytest.raises(UserError, match="unknown criteria"):
        Criteria.from_dict({"low_los": 1})
    c = Criteria(low_loss=0.1)
    assert Criteria.from_dict(c.to_dict()) == c
    assert Criteria().window(20) == 10 and Criteria().window(3) == 3
    assert Criteria(last_frac=0.1).window(20) == 5


def test_regimes_command_writes_documented_json(tmp_path):
    m = _curves()
    summary = {"members": [], "epochs": T}
    write_results(tmp_path, {"dataset": "digits", "kind": "sweep"}, m, summary)
    report, table = run_regimes_command(tmp_path)
    on_disk = json.loads((tmp_path / REGIMES_FILE).read_text())
    assert on_disk == report
    _check_report(on_disk, 6)
    assert on_disk["criteria"]["chance_acc"] == pytest.approx(0.1)
    head = table.splitlines()[0]
    for col in ("ELR", "seed", "label", "conf", "train loss", "test error", "reason"):
        assert col in head
    assert len(table.splitlines()) == 2 + 6 + 2
    assert classify_dir(tmp_path)["members"] == report["members"]
    # cifar100 -> 100 classes.
    write_results(tmp_path, {"dataset": "cifar100"}, m, summary)
    assert classify_dir(tmp_path)["criteria"]["chance_acc"] == pytest.approx(0.01)
    with pytest.raises(UserError, match="not a complete results directory"):
        run_regimes_command(tmp_path / "missing")


def test_num_classes_of_reads_both_config_layouts():
    assert num_classes_of({"dataset": "cifar100"}) == 100  # flat (format 1)
    assert num_classes_of({"dataset": "mnist", "kind": "sweep"}) == 10
    finetune = {"kind": "finetune", "source": "runs/x", "source_config": {"dataset": "cifar100"}}
    assert num_classes_of(finetune) == 100
    nested = {"kind": "sweep", "format_version": 2, "data": {"dataset": "cifar100"}}
    assert num_classes_of(nested) == 100
    assert num_classes_of({**nested, "data": {"dataset": "cifar10"}}) == 10
    # A config Config.from_dict refuses is searched by hand, not an error.
    assert num_classes_of({"dataset": "cifar100", "unknown_key": 1}) == 100
    assert num_classes_of({"kind": "finetune", "source_config": {"dataset": "cifar100"}}) == 100
    assert num_classes_of({"format_version": 2, "data": {"dataset": "cifar100", "x": 1}}) == 100
    assert num_classes_of({"weird": [1, 2]}) == 10


def test_analysis_imports_no_jax():
    code = (
        "import sys, three_regimes_jax.analysis.regimes, three_regimes_jax.analysis.report; "
        "assert 'jax' not in sys.modules, 'jax'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- toy
