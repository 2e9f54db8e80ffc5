"""The transition search (studies/transitions.py): toy, fake sweeps, networks, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_regimes import _check_report

from three_regimes_jax.analysis.report import run_regimes_command
from three_regimes_jax.errors import UserError

ALPHAS = (1.0, 2.0, 4.0)


def test_toy_three_elrs():
    from three_regimes_jax.studies import toy

    elrs = [0.1, 0.2, 0.5, 10.0]
    run = toy.run_toy(ALPHAS, elrs, 2000)
    report = toy.classify_toy(run.loss, ALPHAS, elrs)
    _check_report(report, 4)
    labels = [m["regime"] for m in report["members"]]
    # Converged; settled equilibrium; chaotic equilibrium (F never settles at
    # ELR 0.5, yet it is the paper's regime 2, as predicted_regime says).
    assert labels[:3] == [1, 2, 2]
    assert labels[:3] == [toy.predicted_regime(ALPHAS, e) for e in elrs[:3]]
    assert all("theory" in m["reason"] and "steps" in m["reason"] for m in report["members"])
    # Regime 3 on the toy: mean F within 10% of the random level sum(alpha)/2.
    assert labels[3] == 3


def test_find_toy_transitions_brackets_threshold():
    from three_regimes_jax.studies.transitions import find_toy_transitions

    rep = find_toy_transitions(ALPHAS, (0.05, 0.5), rounds=2, points=8, steps=2000)
    lo, hi = rep["transitions"]["1-2"]
    thr = 1.0 / 7.0
    assert rep["theory"]["1-2"] == pytest.approx(thr)
    assert thr / 1.3 <= lo <= thr <= hi <= thr * 1.3
    assert lo <= rep["midpoints"]["1-2"] <= hi
    assert rep["transitions"]["2-3"] is None and "above the range" in rep["reasons"]["2-3"]
    assert [len(r["elrs"]) for r in rep["rounds"]] == [8, 8]
    assert rep["compute"] == {
        "member_steps": 2 * 8 * 2000,
        "wall_s": pytest.approx(sum(r["wall_s"] for r in rep["rounds"])),
        "rounds": 2,
    }
    # Round 2 lies strictly inside round 1's bracket.
    r1 = rep["rounds"][0]["transitions"]["1-2"]
    assert all(r1[0] < e < r1[1] for e in rep["rounds"][1]["elrs"])


def test_next_grid_and_range_parsing():
    from three_regimes_jax.studies.transitions import next_grid, parse_elr_range

    # Touching brackets stay apart (4 + 4 points), identical ones merge.
    g = next_grid([[0.1, 1.0], [1.0, 10.0]], 8)
    assert len(g) == 8 and sum(e < 1.0 for e in g) == 4
    assert len(next_grid([[0.1, 1.0], [0.1, 1.0]], 5)) == 5
    assert next_grid([None, None], 8) == []
    assert parse_elr_range("1e-6,10") == (1e-6, 10.0)
    for bad in ("1,1", "10,1e-6", "0,1", "1e-6", "a,b"):
        with pytest.raises(UserError):
            parse_elr_range(bad)


# --------------------------------------------------------------------------- networks


def test_find_transitions_zooms_with_fake_sweeps(monkeypatch):
    """The round loop, zooming and accounting, with a fake run_sweep (no training)."""
    from three_regimes_jax.config import Config
    from three_regimes_jax.storage.results import Results
    from three_regimes_jax.studies import sweep
    from three_regimes_jax.studies.transitions import find_transitions

    b12, b23, epochs = 0.02, 2.0, 10
    t = np.arange(1, epochs + 1, dtype=float)
    calls = []

    def fake_run_sweep(config, out=None, **kwargs):
        calls.append(config)
        elr = np.asarray(config.member_elrs)
        reg = np.where(elr < b12, 1, np.where(elr < b23, 2, 3))
        loss = np.stack(
            [{1: 0.05 / t, 2: np.full(epochs, 0.3), 3: np.full(epochs, 4.0)}[r] for r in reg]
        )
        acc = np.stack([np.full(epochs, {1: 1.0, 2: 0.9, 3: 0.1}[r]) for r in reg])
        metrics = {"elr": elr, "seed": np.asarray(config.member_seeds), "epoch": t}
        metrics.update(train_loss=loss, train_acc=acc)
        return Results(config=config.to_dict(), metrics=metrics, summary={})

    class FakeData:
        num_classes = 10

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    base = Config.from_flat(seeds=(0, 1), epochs=1)
    rep = find_transitions(
        base, (1e-4, 100.0), rounds=3, points=6, epochs=epochs, dataset=FakeData()
    )
    assert len(calls) == 3
    assert all(c.train.epochs == epochs and c.train.seeds == (0, 1) for c in calls)
    widths = []
    for r in rep["rounds"]:
        assert r["member_epochs"] == len(r["elrs"]) * 2 * epochs and r["dir"] is None
        assert len(r["members"]) == 2 * len(r["elrs"])
        widths.append([r["transitions"][b][1] / r["transitions"][b][0] for b in ("1-2", "2-3")])
    assert np.all(np.diff(np.asarray(widths), axis=0) < 0)  # every round narrows both brackets
    # Round 2 splits its 6 points between the two brackets.
    lo1, hi1 = rep["rounds"][0]["transitions"]["1-2"]
    assert sum(lo1 < e < hi1 for e in rep["rounds"][1]["elrs"]) == 3
    for b, true in (("1-2", b12), ("2-3", b23)):
        lo, hi = rep["transitions"][b]
        assert lo < true <= hi and lo <= rep["midpoints"][b] <= hi
    assert rep["compute"]["member_epochs"] == sum(r["member_epochs"] for r in rep["rounds"])
    assert rep["compute"]["rounds"] == 3 and rep["epochs"] == epochs
    assert "elrs" not in rep["config"]["train"] and rep["config"]["train"]["seeds"] == [0, 1]
    # A range with no border inside says where it lies.
    rep = find_transitions(
        base, (1e-4, 1e-3), rounds=2, points=3, epochs=epochs, dataset=FakeData()
    )
    assert rep["transitions"] == {"1-2": None, "2-3": None}
    assert "above the range" in rep["reasons"]["1-2"] and len(rep["rounds"]) == 1


@pytest.mark.slow
def test_find_transitions_network(tmp_path):
    from three_regimes_jax.config import Config
    from three_regimes_jax.studies.transitions import TRANSITIONS_FILE, run_find_transitions_command

    base = Config.from_flat(
        dataset="digits", use_data_size=256, hidden=(16, 8), batch_size=64, epochs=1
    )
    out = tmp_path / "ft"
    rep = run_find_transitions_command(
        base, (1e-3, 10.0), rounds=2, points=4, epochs=3, out=out, progress=False
    )
    assert json.loads((out / TRANSITIONS_FILE).read_text()) == json.loads(json.dumps(rep))
    assert [r["round"] for r in rep["rounds"]] == [1, 2]
    r1 = rep["rounds"][0]
    assert r1["elrs"] == pytest.approx(list(np.geomspace(1e-3, 10.0, 4)))
    assert r1["dir"] == "round_1" and (out / "round_1" / "metrics.npz").is_file()
    assert rep["compute"]["member_epochs"] == sum(len(r["elrs"]) * 3 for r in rep["rounds"])
    assert rep["compute"]["wall_s"] > 0 and rep["epochs"] == 3
    for b in ("1-2", "2-3"):
        iv = rep["transitions"][b]
        assert rep["reasons"][b]
        assert iv is None or 1e-3 <= iv[0] < iv[1] <= 10.0
    # The results of a round classify as a regimes.json from a real run.
    report, _ = run_regimes_command(out / "round_1")
    _check_report(report, 4)
    assert report["members"][-1]["regime"] == 3  # ELR 10 after 3 epochs: chance level
    # Another search into the same --out is refused (it holds a different run).
    with pytest.raises(UserError, match="already holds a different run"):
        run_find_transitions_command(base, (1e-3, 10.0), 1, 2, 1, out=out, progress=False)


def test_find_transitions_as_two_shard_jobs_equals_the_whole_search(tmp_path, monkeypatch):
    """Two jobs (threads here; SLURM array tasks in practice) share one --out, each trains
    its shard of every round and waits for the other's: both report the whole search."""
    import threading

    from three_regimes_jax.config import Config
    from three_regimes_jax.studies import transitions as tr

    monkeypatch.setattr(tr, "POLL_S", 0.05)
    base = Config.from_flat(
        dataset="digits", use_data_size=256, hidden=(16, 8), batch_size=64, strategy="map"
    )
    args = dict(elr_range=(1e-3, 10.0), rounds=2, points=4, epochs=2, progress=False)
    whole = tr.run_find_transitions_command(base, **args, out=tmp_path / "whole")
    reports, errors = {}, []

    def job(k: int) -> None:
        try:
            out = tmp_path / "sharded"
            reports[k] = tr.run_find_transitions_command(base, **args, out=out, shard=f"{k}/2")
        except Exception as e:  # noqa: BLE001 - reported by the assert below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for k in range(2):
        rep = reports[k]
        assert rep["transitions"] == whole["transitions"]
        got = [(r["elrs"], r["transitions"]) for r in rep["rounds"]]
        assert got == [(r["elrs"], r["transitions"]) for r in whole["rounds"]]
        assert (tmp_path / "sharded" / f"shard_{k}_of_2" / tr.TRANSITIONS_FILE).is_file()
    assert (tmp_path / "sharded" / "shard_1_of_2" / "round_2" / "metrics.npz").is_file()
    # One job waits for a shard that never comes: one line naming it, after wait_s.
    with pytest.raises(UserError, match="shard_1_of_2"):
        tr.wait_for_shards([tmp_path / "sharded" / "shard_1_of_2" / "round_9"], 0.2)
    with pytest.raises(UserError, match="N can be at most"):
        tr.run_find_transitions_command(base, **args, out=tmp_path / "x", shard="0/5")
