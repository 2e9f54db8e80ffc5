"""The package's import graph, its cycles and its layer violations.

Run ``python tools/import_graph.py`` from the repository root: it prints each
module's imports of first-party modules (``three_regimes_jax``, ``plotting``,
``experiments``), then any import cycle and any import that breaks the layer
rules of docs/ARCHITECTURE.md, and exits 1 if there is one.  Imports are read
from the source (``ast``), including those inside functions, so a lazy import
counts as an edge too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("three_regimes_jax", "plotting", "experiments")

# Layer of each first-party module prefix (longest prefix wins), and which
# layers each layer may import.  See docs/ARCHITECTURE.md.
LAYERS = {
    "three_regimes_jax": "api",
    "three_regimes_jax.errors": "base",
    "three_regimes_jax.config": "base",
    "three_regimes_jax.options": "base",
    "three_regimes_jax.sections": "base",
    "three_regimes_jax.sections_run": "base",
    "three_regimes_jax.elr_schedules": "base",
    "three_regimes_jax.engine": "engine",
    "three_regimes_jax.storage": "storage",
    "three_regimes_jax.analysis": "analysis",
    "three_regimes_jax.studies": "studies",
    "three_regimes_jax.cli": "cli",
    "three_regimes_jax.cli_errors": "cli",
    "three_regimes_jax.cli_flags": "cli",
    "plotting": "plotting",
    "experiments": "experiments",
}
ALLOWED = {
    "base": {"base"},
    "engine": {"base", "engine"},
    "storage": {"base", "storage"},
    "analysis": {"base", "storage", "analysis"},
    "studies": {"base", "engine", "storage", "analysis", "studies"},
    "plotting": {"base", "storage", "analysis", "plotting"},
    "experiments": {"base", "studies", "storage", "analysis", "plotting", "experiments"},
    "cli": {"base", "studies", "storage", "analysis", "engine", "plotting", "experiments", "cli"},
    "api": {"base", "engine", "storage", "analysis", "studies", "api"},
}


def module_name(path: Path) -> str:
    """Dotted module name of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every first-party module -> its file."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(path)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """First-party modules imported by one module (resolved to known module names)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                anchor = base
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                mod = f"{anchor}.{mod}" if mod else anchor
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    # "from pkg import sub" also names pkg/__init__: keep the most specific only.
    return {t for t in found if not any(o.startswith(t + ".") for o in found)}


def layer_of(name: str) -> str:
    """The layer of a module (longest matching prefix in LAYERS)."""
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def graph() -> dict[str, set[str]]:
    """Module -> first-party modules it imports."""
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def violations(g: dict[str, set[str]]) -> list[str]:
    """Imports that break the layer rules, as ``a -> b (layer -> layer)``."""
    bad = []
    for a, targets in sorted(g.items()):
        la = layer_of(a)
        for b in sorted(targets):
            lb = layer_of(b)
            if lb not in ALLOWED[la]:
                bad.append(f"{a} -> {b} ({la} -> {lb})")
    return bad


def main() -> int:
    """Prints the graph, cycles and violations; returns 1 if any."""
    g = graph()
    for name in sorted(g):
        deps = ", ".join(sorted(g[name])) or "-"
        print(f"{name} [{layer_of(name)}]: {deps}")
    cyc, bad = cycles(g), violations(g)
    print(f"\n{len(g)} modules; cycles: {len(cyc)}; layer violations: {len(bad)}")
    for c in cyc:
        print("cycle:", " <-> ".join(c))
    for b in bad:
        print("violation:", b)
    return 1 if cyc or bad else 0


if __name__ == "__main__":
    sys.exit(main())
