"""The experiment catalog: configs validate, steps parse, one quick experiment runs end to end."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from experiments import runner
from experiments.runner import (
    experiment_names,
    list_experiments,
    load_experiment,
    run_experiment,
    validate_config,
)
from three_regimes_jax.cli import build_parser
from three_regimes_jax.errors import UserError

NAMES = experiment_names()
READY = [n for n in NAMES if load_experiment(n)["status"] == "ready"]
REGISTERED = runner.registered_subcommands()
README = Path(__file__).resolve().parents[1] / "experiments" / "README.md"


def test_catalog_covers_the_sphere_figures_and_lists_pending_ones():
    ready = {int(n[3:]) for n in READY}
    assert ready == {1, 2, 3, 4, 5, 6, 8, *range(11, 25), 27}
    pending = {int(r["name"][3:]) for r in list_experiments() if r["status"] == "pending"}
    assert pending == {7, 25, 26, 28}
    assert [r["name"] for r in list_experiments()] == NAMES  # figure order
    assert NAMES[:3] == ["fig1", "fig2", "fig3"]


def test_configs_are_package_data():
    files = sorted(p.name for p in resources.files("experiments").joinpath("configs").iterdir())
    assert "fig01.json" in files and len([f for f in files if f.endswith(".json")]) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_config_validates(name):
    cfg = load_experiment(name)
    assert cfg["figure"] == name[3:]
    assert isinstance(cfg["shows"], str) and cfg["shows"].strip()
    if cfg["status"] == "ready":
        quick = cfg["variants"]["quick"]
        assert isinstance(quick["measured_time_s"], int | float), "quick variant not measured"
        assert quick["measured_time_s"] < 240, "quick variants should take a few minutes"
        assert cfg["variants"]["paper"]["estimated_time"]
        assert cfg["expected"] and "TO FILL" not in cfg["expected"]


@pytest.mark.parametrize("name", READY)
@pytest.mark.parametrize("variant", ["quick", "paper"])
def test_every_step_parses_with_the_cli(name, variant, tmp_path):
    steps = run_experiment(name, variant, out=tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()  # a dry run creates nothing
    for step in steps:
        assert not re.search(r"\{\w+\}", " ".join(step)), step  # every placeholder filled
        if step[0] not in REGISTERED:
            continue  # plot/regimes/find-transitions/experiment: checked once they are wired
        args = build_parser().parse_args(step)
        assert args.command == step[0]


def test_dry_run_substitutes_placeholders(tmp_path, monkeypatch):
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path / "data"))
    steps = run_experiment("fig1", "quick", out=tmp_path / "o", dry_run=True)
    raw = load_experiment("fig1")["variants"]["quick"]["steps"]
    assert len(steps) == len(raw)
    flat = [a for s in steps for a in s]
    assert str(tmp_path / "data" / "mnist") in flat
    assert str(tmp_path / "o" / "sweep") in flat
    assert not (tmp_path / "o").exists()


def test_default_out_is_runs_name_variant(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    steps = run_experiment("2", dry_run=True)  # "2" is an alias of fig2
    assert str(Path("runs") / "fig2-quick" / "toy") in steps[0]


def test_names_have_aliases():
    assert runner.canonical_name("Fig01") == runner.canonical_name("figure1") == "fig1"
    assert runner.canonical_name(" 27 ") == "fig27"


def test_unknown_experiment_lists_the_names():
    with pytest.raises(UserError, match=r"unknown experiment 'fig99'.*fig1, fig2, fig3"):
        run_experiment("fig99", dry_run=True)
    with pytest.raises(UserError, match="unknown experiment"):
        load_experiment("banana")


def test_unknown_variant_and_pending_figures_are_refused():
    with pytest.raises(UserError, match="unknown variant 'huge'"):
        run_experiment("fig1", "huge", dry_run=True)
    with pytest.raises(UserError, match="fig7 is pending"):
        run_experiment("fig7", dry_run=True)


def test_validation_rejects_bad_configs():
    good = load_experiment("fig2")
    validate_config(good, "fig2")

    def bad(mutate, match):
        cfg = json.loads(json.dumps(good))
        mutate(cfg)
        with pytest.raises(UserError, match=match):
            validate_config(cfg, "fig2")

    quick = ("variants", "quick")
    bad(lambda c: c.pop("expected"), "missing keys expected")
    bad(lambda c: c["variants"].pop("paper"), "variants must be exactly")
    bad(lambda c: c["variants"]["quick"].pop("measured_on"), "missing keys measured_on")
    bad(lambda c: c[quick[0]][quick[1]].update(steps=[]), "non-empty list")
    bad(lambda c: c[quick[0]][quick[1]].update(steps=[["train", "--x"]]), "unknown subcommand")
    bad(lambda c: c[quick[0]][quick[1]].update(steps=[["toy", "{outt}/x"]]), "placeholder")
    bad(lambda c: c[quick[0]][quick[1]].update(steps=[["toy", 3]]), "list of strings")
    bad(lambda c: c.update(status="done"), "status must be one of")
    bad(lambda c: c.update(figure="3"), "figure field")


def test_missing_data_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"needs data at .*nowhere/mnist.*THREE_REGIMES_DATA_DIR"):
        run_experiment("fig1", "quick", out=out, skip_unregistered=True)
    assert not out.exists()


def _fake(monkeypatch, steps):
    cfg = load_experiment("fig2")
    cfg["variants"]["quick"]["steps"] = steps
    monkeypatch.setattr(runner, "load_experiment", lambda name: cfg)


def test_a_subcommand_the_cli_lacks_is_refused_up_front(tmp_path, monkeypatch):
    _fake(monkeypatch, [["toy", "--alphas", "1", "--elrs", "0.1", "--out", "{out}/t"]])
    monkeypatch.setattr(runner, "registered_subcommands", lambda: {"sweep"})
    with pytest.raises(UserError, match="needs the `toy` subcommand.*nothing was run"):
        run_experiment("fig2", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert run_experiment("fig2", out=tmp_path / "o", skip_unregistered=True) == []


def test_an_invalid_step_is_refused_up_front(tmp_path, monkeypatch):
    _fake(monkeypatch, [["toy", "--alphas", "1", "--out", "{out}/t"]])  # --elrs missing
    with pytest.raises(UserError, match=r"step 1/1 .* is invalid: .*--elrs"):
        run_experiment("fig2", out=tmp_path / "o")


def test_a_failing_step_stops_with_its_name(tmp_path, monkeypatch, capsys):
    steps = [
        ["toy", "--alphas", "1", "--elrs", "0.1", "--steps", "5", "--out", "{out}/a"],
        ["toy", "--alphas", "1", "--elrs", "0.1", "--steps", "0", "--out", "{out}/b"],
        ["toy", "--alphas", "1", "--elrs", "0.1", "--steps", "5", "--out", "{out}/c"],
    ]
    _fake(monkeypatch, steps)
    with pytest.raises(UserError, match=r"step 2/3 failed \(exit code 2\): three-regimes toy"):
        run_experiment("fig2", out=tmp_path / "o")
    assert (tmp_path / "o" / "a" / "toy.npz").exists()
    assert not (tmp_path / "o" / "c").exists()


def test_quick_toy_experiment_runs_end_to_end(tmp_path):
    """Fig. 2 quick: the real toy run, its summary and both figures (a few seconds)."""
    out = tmp_path / "fig2"
    steps = run_experiment("fig2", "quick", out=out)
    assert [s[0] for s in steps] == ["toy"]
    summary = json.loads((out / "toy" / "summary.json").read_text())
    assert summary["threshold"] == pytest.approx(1 / 7)
    observed = {r["elr"]: r["regime_observed"] for r in summary["runs"]}
    assert observed[0.05] == observed[0.1] == 1  # below 1/sum(alpha): converges
    assert observed[0.2] == 2  # settles at the eq. 25 level
    assert all(observed[e] != 1 for e in (0.5, 2.0, 20.0))
    assert (out / "toy" / "toy_loss.png").exists() and (out / "toy" / "toy_group_elr.png").exists()


def test_readme_table_has_every_experiment():
    text = README.read_text()
    for row in list_experiments():
        assert f"three-regimes experiment {row['name']} " in text or row["status"] == "pending"
        assert f"| {row['figure']} |" in text, row["name"]
        if row["quick_time_s"] is not None:
            assert f"{row['quick_time_s']:.0f} s" in text, row["name"]
