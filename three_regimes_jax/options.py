"""Declared options: a field's default, flag, help and constraints, and their checks.

:func:`option` declares a config field (see :mod:`three_regimes_jax.config`);
:class:`Section` is the base of a config section, which checks and normalises
every field when it is constructed, raising one
:class:`~three_regimes_jax.errors.UserError` line that names the flag.
:func:`check_elrs` is the one ELR check of the package.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from three_regimes_jax.errors import UserError

_INT64 = (-(2**63), 2**63 - 1)
F32_TINY = 1.1754944e-38  # smallest normal float32: ELRs below it train at ELR 0
F32_MAX = 3.4028235e38


def option(
    default: Any,
    flag: str,
    help: str,  # noqa: A002 (argparse's word)
    kind: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] | None = None,
    unique: bool = False,
    nonempty: bool = False,
    positive: bool = False,
    flat: str | None = None,
) -> Any:
    """A config field with its flag, help, kind and constraints.

    Args:
      default: the default value (the only place it is written).
      flag: the command-line flag, e.g. ``"--batch-size"``.
      help: one line for ``--help``.
      kind: ``str``, ``int``, ``float``, ``bool``, ``ints``, ``floats`` (comma
        lists), ``opt_int``, ``opt_float`` or ``opt_str`` (may be None).
      low: smallest allowed value (of each item for lists).
      high: largest allowed value.
      choices: allowed strings.
      unique: list items must not repeat.
      nonempty: a list needs at least one item.
      positive: finite and > 0 in float32 (ELRs).
      flat: the field's name in the flat namespace (default: the flag's words
        joined by ``_``), used by :meth:`Config.from_flat` and legacy configs.

    Returns:
      A ``dataclasses.field``.
    """
    meta = dict(
        flag=flag,
        help=help,
        kind=kind,
        low=low,
        high=high,
        choices=choices,
        unique=unique,
        nonempty=nonempty,
        positive=positive,
        flat=flat or flag.lstrip("-").replace("-", "_"),
    )
    return dataclasses.field(default=default, metadata=meta)


def check_elrs(values: Any, flag: str = "--elrs", *, allow_empty: bool = False) -> tuple:
    """Checks a list of ELRs: finite, > 0 and representable in float32, no repeats.

    The one ELR check of the package (configs, the toy, interpolation).

    Raises:
      UserError: naming ``flag`` and the first bad value.
    """
    return _coerce_list(
        values, "floats", flag, positive=True, unique=True, nonempty=not allow_empty
    )


def _number(value: Any, kind: str, flag: str, positive: bool = False) -> Any:
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise UserError(f"{flag} must be an integer, got {value!r}")
        if not _INT64[0] <= value <= _INT64[1]:
            raise UserError(f"{flag} must fit in 64 bits, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"{flag} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        if positive:
            raise UserError(f"every ELR must be a finite number > 0, got {value} in {flag}")
        raise UserError(f"{flag} must be a finite number, got {value}")
    return value


def _check_bounds(value: Any, flag: str, low, high, positive: bool) -> None:
    if positive and not (F32_TINY <= value <= F32_MAX):
        raise UserError(
            f"every ELR must be a finite number > 0, got {value} in {flag}"
            + (" (below float32's smallest normal number)" if 0 < value < F32_TINY else "")
        )
    if low is not None and value < low:
        raise UserError(f"{flag} must be >= {low:g}, got {value}")
    if high is not None and value > high:
        raise UserError(f"{flag} must be <= {high:g}, got {value}")


def _coerce_list(
    values: Any,
    kind: str,
    flag: str,
    *,
    low=None,
    high=None,
    positive=False,
    unique=False,
    nonempty=False,
) -> tuple:
    if isinstance(values, str | bytes) or not hasattr(values, "__iter__"):
        raise UserError(f"{flag} must be a list of numbers, got {values!r}")
    item_kind = "int" if kind == "ints" else "float"
    items = tuple(_number(v, item_kind, flag, positive) for v in values)
    if nonempty and not items:
        raise UserError(f"{flag} is empty: give at least one value")
    for v in items:
        _check_bounds(v, flag, low, high, positive)
    if unique and len(set(items)) != len(items):
        raise UserError(f"{flag} must not repeat values, got {', '.join(map(str, items))}")
    return items


def _coerce(value: Any, meta: Mapping[str, Any]) -> Any:
    """The checked, normalised value of one field (tuples for lists)."""
    kind, flag = meta["kind"], meta["flag"]
    if kind.startswith("opt_"):
        if value is None:
            return None
        kind = kind[4:]
    if kind == "bool":
        if not isinstance(value, bool):
            raise UserError(f"{flag} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise UserError(f"{flag} must be a string, got {value!r}")
        if meta["choices"] and value not in meta["choices"]:
            what = flag.lstrip("-").replace("-", " ")
            raise UserError(
                f"unknown {what} {value!r} ({flag}); choose one of: {', '.join(meta['choices'])}"
            )
        if not value and meta["nonempty"]:
            raise UserError(f"{flag} is empty")
        return value
    if kind == "strs":
        if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
            raise UserError(f"{flag} must be a list of non-empty strings, got {value!r}")
        items = tuple(v.strip() for v in value)
        if meta["nonempty"] and not items:
            raise UserError(f"{flag} is empty: give at least one value")
        if meta["unique"] and len(set(items)) != len(items):
            raise UserError(f"{flag} must not repeat values, got {', '.join(items)}")
        return items
    if kind in ("ints", "floats"):
        return _coerce_list(
            value,
            kind,
            flag,
            low=meta["low"],
            high=meta["high"],
            positive=meta["positive"],
            unique=meta["unique"],
            nonempty=meta["nonempty"],
        )
    value = _number(value, kind, flag, meta["positive"])
    _check_bounds(value, flag, meta["low"], meta["high"], meta["positive"])
    return value


class Section:
    """Base of the config sections: checks and normalises every field at construction."""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(getattr(self, f.name), f.metadata))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists for tuples)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "config") -> Any:
        """Inverse of :meth:`to_dict`; unknown keys are refused with one line."""
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: expected an object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(
                f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**d)
