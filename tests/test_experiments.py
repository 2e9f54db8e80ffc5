"""The experiment catalog: configs validate, trees build, commands parse back, one runs."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path

import pytest

from experiments import runner
from experiments.runner import (
    experiment_names,
    format_step,
    list_experiments,
    load_experiment,
    run_experiment,
    validate_config,
)
from experiments.steps import KINDS, check_step
from three_regimes_jax import cli
from three_regimes_jax.config import CONFIG_VERSION, FINETUNE_OVERRIDES, Config, fields_of
from three_regimes_jax.errors import UserError

NAMES = experiment_names()
READY = [n for n in NAMES if load_experiment(n)["status"] == "ready"]
README = Path(__file__).resolve().parents[1] / "experiments" / "README.md"


def _steps(variant: str):
    """(name, step index, step) of every ready config's variant, placeholders left in."""
    for name in READY:
        for i, step in enumerate(load_experiment(name)["variants"][variant]["steps"], 1):
            yield name, i, step


def test_catalog_covers_every_figure_and_none_is_pending():
    ready = {int(n[3:]) for n in READY}
    assert ready == set(range(1, 29))
    assert not [r for r in list_experiments() if r["status"] == "pending"]
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
        t = quick["measured_time_s"]
        if t is None:  # changed since its last measurement
            assert quick["measured_on"] == "not yet measured"
        else:
            assert isinstance(t, int | float) and t < 240, "quick variants should take minutes"
        assert cfg["variants"]["paper"]["estimated_time"]
        assert cfg["expected"] and "TO FILL" not in cfg["expected"]


@pytest.mark.parametrize("variant", ["quick", "paper"])
def test_every_step_checks(variant, tmp_path):
    """Every config tree builds (ResNets, whole-space and Transformer runs included)."""
    for name, i, step in _steps(variant):
        try:
            check_step(runner.substitute(step, tmp_path, tmp_path))
        except UserError as e:
            raise AssertionError((name, variant, i, str(e))) from None


def _tree_config(tree):
    return Config.from_dict({"kind": "sweep", "format_version": CONFIG_VERSION, **tree})


def _parse(step):
    words = shlex.split(format_step(step))
    assert words[:2] == ["three-regimes", step["run"]]
    return cli.build_parser().parse_args(words[1:])


@pytest.mark.parametrize("variant", ["quick", "paper"])
def test_sweep_command_lines_give_the_steps_config(variant):
    """The dry-run command of every sweep, parsed by the CLI, is the step's config tree."""
    count = 0
    for name, _, step in _steps(variant):
        if step["run"] != "sweep":
            continue
        count += 1
        args = _parse(step)
        assert cli.config_from_args(args) == _tree_config(step["config"]), name
        assert args.out == step["out"] and not args.resume
    assert count >= len(READY) - 2  # figs 2 and 8 are the toy


@pytest.mark.parametrize("variant", ["quick", "paper"])
def test_other_command_lines_give_the_steps_arguments(variant):
    """Every other step's command parses to its keys (or their defaults) under the CLI."""
    seen = set()
    for _, _, step in _steps(variant):
        if step["run"] == "sweep":
            continue
        seen.add(step["run"])
        args = vars(_parse(step))
        if step["run"] == "finetune":
            given = {k: v for k, v in args.items() if k in FINETUNE_OVERRIDES}
            assert given == {
                k: tuple(v) if isinstance(v, list) else v for k, v in step["overrides"].items()
            }
            assert (args["source"], args.get("epoch")) == (step["from"], step.get("epoch"))
            continue
        for key in KINDS[step["run"]].keys:
            parsed = args[key.name]
            if step["run"] == "toy" and key.kind == "floats":
                parsed = cli.parse_floats(parsed, key.flag)
            assert parsed == step.get(key.name, key.default), (step, key.name)
    assert seen == {"finetune", "interpolate", "toy", "plot", "regimes"}


def test_finetune_overrides_are_the_cli_finetune_flags():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["finetune"]._actions}
    flats = {f.metadata["flat"] for s in ("train", "measure", "checkpoint") for f in fields_of(s)}
    assert dests & flats == set(FINETUNE_OVERRIDES) - {"members", "data_key"}
    assert {"source", "epoch", "members", "data_key"} <= dests


def test_format_step_renders_flags_lists_and_bools():
    step = {
        "run": "sweep",
        "config": {"train": {"elrs": [1e-4, 0.03, 1.0], "random_walk": True}},
        "out": "{out}/a b",
    }
    assert format_step(step) == (
        "three-regimes sweep --elrs 1e-4,3e-2,1 --epochs 10 --random-walk --out '{out}/a b'"
    )


def test_dry_run_substitutes_placeholders(tmp_path, monkeypatch):
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path / "data"))
    steps = run_experiment("fig1", "quick", out=tmp_path / "o", dry_run=True)
    assert len(steps) == len(load_experiment("fig1")["variants"]["quick"]["steps"])
    assert steps[0]["config"]["data"]["data_dir"] == str(tmp_path / "data" / "mnist")
    assert steps[0]["out"] == str(tmp_path / "o" / "sweep")
    assert steps[1]["paths"] == [str(tmp_path / "o" / "sweep")]
    assert "{" not in " ".join(format_step(s) for s in steps)
    assert not (tmp_path / "o").exists()  # a dry run creates nothing


def test_default_out_is_runs_name_variant(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    steps = run_experiment("2", dry_run=True)  # "2" is an alias of fig2
    assert steps[0]["out"] == str(Path("runs") / "fig2-quick" / "toy")


def test_names_have_aliases():
    assert runner.canonical_name("Fig01") == runner.canonical_name("figure1") == "fig1"
    assert runner.canonical_name(" 27 ") == "fig27"


def test_unknown_experiment_lists_the_names():
    with pytest.raises(UserError, match=r"unknown experiment 'fig99'.*fig1, fig2, fig3"):
        run_experiment("fig99", dry_run=True)
    with pytest.raises(UserError, match="unknown experiment"):
        load_experiment("banana")


def test_unknown_variant_and_pending_figures_are_refused(monkeypatch):
    with pytest.raises(UserError, match="unknown variant 'huge'"):
        run_experiment("fig1", "huge", dry_run=True)
    old = load_experiment("fig7")
    cfg = {k: old[k] for k in ("figure", "title", "shows", "notes")} | {"status": "pending"}
    validate_config(cfg, "fig7")
    monkeypatch.setattr(runner, "load_experiment", lambda name: cfg)
    with pytest.raises(UserError, match="fig7 is pending"):
        run_experiment("fig7", dry_run=True)


def test_validation_rejects_bad_configs():
    good = load_experiment("fig3")
    validate_config(good, "fig3")

    def bad(mutate, match):
        cfg = json.loads(json.dumps(good))
        mutate(cfg)
        with pytest.raises(UserError, match=match):
            validate_config(cfg, "fig3")

    def step(i, **changes):
        def mutate(cfg):
            cfg["variants"]["quick"]["steps"][i].update(changes)

        return mutate

    def config(section, **fields):
        def mutate(cfg):
            cfg["variants"]["quick"]["steps"][0]["config"].setdefault(section, {}).update(fields)

        return mutate

    where = r"experiment fig3 \(quick\) step 1"
    bad(lambda c: c.pop("expected"), "missing keys expected")
    bad(lambda c: c["variants"].pop("paper"), "variants must be exactly")
    bad(lambda c: c["variants"]["quick"].pop("measured_on"), "missing keys measured_on")
    bad(lambda c: c["variants"]["quick"].update(steps=[]), "non-empty list")
    bad(lambda c: c["variants"]["quick"].update(steps=[["toy", "--x"]]), "must be an object")
    bad(step(0, run="train"), f"{where}: unknown step kind 'train'; use one of sweep,")
    bad(step(0, outt="x"), rf"{where} \(sweep\): unknown key\(s\) outt; known: config, out")
    bad(lambda c: c["variants"]["quick"]["steps"][0].pop("out"), "missing key 'out'")
    bad(step(2, paths="{out}/sweep"), r"step 3 \(plot\): paths must be a non-empty list")
    bad(step(0, out="{outt}/x"), r"unknown placeholder \{outt\}")
    bad(config("model", name="{dat}"), r"unknown placeholder \{dat\}")
    bad(config("optim", lr=1), "config section 'optim' is not allowed here")
    bad(config("train", elr=[1]), r"config.train: unknown field\(s\) elr; known: elrs,")
    bad(step(1, overrides={"elrs": [1e-3]}), "overrides must set epochs")
    bad(step(1, overrides={"elrs": [1], "epochs": 1, "seeds": [1]}), "fixed field.*seeds")
    bad(step(1, epoch=-1), "epoch must be >= 0")
    bad(lambda c: c.update(status="done"), "status must be one of")
    bad(lambda c: c.update(figure="2"), "figure field")


def test_missing_data_fails_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"needs data at .*nowhere/mnist.*THREE_REGIMES_DATA_DIR"):
        run_experiment("fig1", "quick", out=out)
    assert not out.exists()


def _fake(monkeypatch, steps):
    cfg = load_experiment("fig2")
    cfg["variants"]["quick"]["steps"] = steps
    validate_config(cfg, "fig2")
    monkeypatch.setattr(runner, "load_experiment", lambda name: cfg)


def _toy(out: str, steps: int = 5) -> dict:
    return {"run": "toy", "alphas": [1], "elrs": [0.1], "steps": steps, "out": out}


def test_an_invalid_value_is_refused_up_front(tmp_path, monkeypatch):
    sweep = {"run": "sweep", "config": {"train": {"epochs": 0}}, "out": "{out}/s"}
    _fake(monkeypatch, [_toy("{out}/a"), sweep])
    with pytest.raises(
        UserError,
        match=r"fig2 \(quick\): step 2/2 \(three-regimes sweep .*\) is invalid: "
        r".*--epochs.*0.*; nothing was run",
    ):
        run_experiment("fig2", out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_a_failing_step_stops_with_its_name(tmp_path, monkeypatch):
    regimes = {"run": "regimes", "dir": "{out}/missing"}
    _fake(monkeypatch, [_toy("{out}/a"), regimes, _toy("{out}/c")])
    with pytest.raises(UserError, match=r"step 2/3 failed: .*\(three-regimes regimes .*missing\)"):
        run_experiment("fig2", out=tmp_path / "o")
    assert (tmp_path / "o" / "a" / "toy.npz").exists()
    assert not (tmp_path / "o" / "c").exists()


def test_quick_toy_experiment_runs_end_to_end(tmp_path):
    """Fig. 2 quick: the real toy run, its summary and both figures (a few seconds)."""
    out = tmp_path / "fig2"
    steps = run_experiment("fig2", "quick", out=out)
    assert [s["run"] for s in steps] == ["toy"]
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


def test_readme_shows_the_command_of_every_step():
    text = README.read_text()
    for variant in ("quick", "paper"):
        for name, i, step in _steps(variant):
            assert format_step(step) + "\n" in text, (name, variant, i)


def test_missing_cifar_is_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch):
    """Fig. 11 (paper) needs CIFAR: refused up front, one line naming the path."""
    monkeypatch.setenv("THREE_REGIMES_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "o"
    with pytest.raises(UserError, match=r"needs data at .*cifar-100-python") as e:
        run_experiment("fig11", "paper", out=out)
    assert "\n" not in str(e.value)
    assert not out.exists()
