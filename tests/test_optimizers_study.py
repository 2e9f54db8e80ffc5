"""experiments/optimizers.py: the study that fills experiments/OPTIMIZERS.md."""

from __future__ import annotations

import json

import pytest

from experiments import optimizers as study


def test_sections_are_replaced_not_duplicated(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "DOC", tmp_path / "OPTIMIZERS.md")
    study.write_section("borders", "cmd one", "| a |")
    study.write_section("schedules", "cmd two", "| b |")
    study.write_section("borders", "cmd three", "| c |")
    text = (tmp_path / "OPTIMIZERS.md").read_text()
    assert text.count("<!-- borders -->") == 1 and "| a |" not in text
    assert text.index("cmd three") < text.index("cmd two")  # replaced in place
    rows = [{"optimizer": "sgd", "sphere": "total", "1-2": [1e-3, 2e-3], "2-3": None,
             "wall_s": 1.0}]  # fmt: skip
    assert "| sgd | total | [0.001, 0.002] | not found | 1.0 |" in study.borders_table(rows)


def test_the_border_comes_from_a_search_report(tmp_path):
    from three_regimes_jax.errors import UserError

    (tmp_path / "transitions.json").write_text(json.dumps({"midpoints": {"1-2": 0.0065}}))
    assert study.border_of(tmp_path) == 0.0065
    (tmp_path / "transitions.json").write_text(json.dumps({"midpoints": {}}))
    with pytest.raises(UserError, match="no 1/2 border"):
        study.border_of(tmp_path)
    with pytest.raises(UserError, match="no find-transitions report"):
        study.border_of(tmp_path / "missing")


def test_every_optimizer_and_sphere_is_a_row():
    from three_regimes_jax.engine.sphere_opt import ON_SPHERE, OPTIMIZERS, SPHERES

    assert set(study.COMBOS) == {(o, s) for o in ON_SPHERE for s in SPHERES} | {
        (o, "total") for o in set(OPTIMIZERS) - set(ON_SPHERE)
    }


@pytest.mark.slow
def test_schedules_study_runs_on_real_mnist(tmp_path, mnist_dir):
    argv = ["schedules", "--out", str(tmp_path), "--data-dir", str(mnist_dir), "--train-size",
            "256", "--epochs", "2", "--elrs", "5e-3", "2e-2", "--switch", "1", "--seeds", "0",
            "1", "--sharpness-size", "128"]  # fmt: skip
    assert study.main(argv) == 0
    summary = json.loads((tmp_path / "schedules.json").read_text())
    assert set(summary) == {"best fixed ELR", "best cosine"}
