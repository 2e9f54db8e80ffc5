"""The ``three-regimes`` command line equivalent to an experiment step (for --dry-run and docs)."""

from __future__ import annotations

import shlex
from typing import Any

from experiments.steps import KINDS, PLACEHOLDER_RE, PROG, Kind, _is_number
from three_regimes_jax.config import fields_of, flat_names


def _num(v: float | int, exp: bool = False) -> str:
    """The shortest text that reads back as ``v``; ``exp``: ``1e-2`` rather than ``0.01``."""
    if isinstance(v, int) or (v.is_integer() and 1 <= abs(v) < 1e15):
        return str(int(v))
    p = next((p for p in range(1, 18) if float(f"{v:.{p}g}") == v), 17)
    text = f"{v:.{p - 1}e}" if exp and abs(v) < 1 else f"{v:.{p}g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


def _text(value: Any) -> str:
    """A flag's value: lists comma-joined, in ``1e-k`` form if any item is below 0.01."""
    if isinstance(value, list | tuple):
        exp = any(isinstance(v, float) and 0 < abs(v) < 0.01 for v in value)
        return ",".join(_num(v, exp) if _is_number(v) else str(v) for v in value)
    if _is_number(value):
        return _num(value, 0 < abs(value) < 0.01)
    return str(value)


def _flag_words(flag: str, kind: str, value: Any) -> list[str]:
    if kind == "bool":
        return [flag] if value else []
    if value is None:
        return []
    return [flag, _text(value)]


def _config_words(step: dict[str, Any], kind: Kind) -> list[str]:
    """Flags of a config tree: the fields it sets plus the command's required ones."""
    tree = step["config"]
    required = set(kind.required)
    if tree.get("train", {}).get("mode") == "whole":
        required -= {"elrs"}  # a whole-space sweep has --lrs instead
    words = []
    for section in kind.sections:
        given = tree.get(section, {})
        for f in fields_of(section):
            m = f.metadata
            if f.name in given or m["flat"] in required:
                words += _flag_words(m["flag"], m["kind"], given.get(f.name, f.default))
    return words


def _override_words(overrides: dict[str, Any]) -> list[str]:
    words = []
    for flat, (section, name) in flat_names().items():
        if flat in overrides:
            m = next(f.metadata for f in fields_of(section) if f.name == name)
            words += _flag_words(m["flag"], m["kind"], overrides[flat])
    return words


def _quote(word: str) -> str:
    """Shell quoting that leaves ``{out}`` and ``{data}`` readable (braces alone are literal)."""
    plain = PLACEHOLDER_RE.sub("x", word)
    return word if shlex.quote(plain) == plain else shlex.quote(word)


def format_step(step: dict[str, Any]) -> str:
    """The ``three-regimes ...`` command line equivalent to a (validated) step."""
    kind = KINDS[step["run"]]
    words = [PROG, step["run"]]
    for key in kind.keys:
        if key.kind == "tree":
            words += _config_words(step, kind)
        elif key.kind == "flat":
            words += _override_words(step[key.name])
        elif key.name not in step:
            continue
        elif key.flag is None:
            value = step[key.name]
            words += value if isinstance(value, list) else [value]
        else:
            words += _flag_words(key.flag, key.kind, step[key.name])
    return " ".join(_quote(w) for w in words)
