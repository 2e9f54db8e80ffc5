"""The layer rules of docs/ARCHITECTURE.md: no import cycle, no wrong-way import."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools/import_graph.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_no_cycles_and_no_layer_violations():
    tool = _tool()
    g = tool.graph()
    assert "three_regimes_jax.config" in g and "plotting" in g
    assert tool.cycles(g) == []
    assert tool.violations(g) == []


def test_the_checker_catches_a_cycle_and_a_wrong_way_import():
    tool = _tool()
    g = {"three_regimes_jax.engine.grid": {"three_regimes_jax.studies.run"}}
    g["three_regimes_jax.studies.run"] = {"three_regimes_jax.engine.grid"}
    assert tool.cycles(g) == [["three_regimes_jax.engine.grid", "three_regimes_jax.studies.run"]]
    assert tool.violations(g) == [
        "three_regimes_jax.engine.grid -> three_regimes_jax.studies.run (engine -> studies)"
    ]


def test_no_module_over_about_400_lines():
    big = {}
    for pkg in ("three_regimes_jax", "plotting", "experiments"):
        for path in (ROOT / pkg).rglob("*.py"):
            n = len(path.read_text().splitlines())
            if n > 450:
                big[str(path.relative_to(ROOT))] = n
    assert big == {}
