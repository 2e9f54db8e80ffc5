"""Flags of the command line: list parsing and flags generated from the config tree."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from three_regimes_jax.config import WHOLE_ONLY
from three_regimes_jax.errors import UserError


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        return []
    if not all(items):
        raise UserError(f"{what} has an empty item in {text!r}; use e.g. 1e-3,1e-2")
    return items


def parse_floats(text: str, what: str) -> list[float]:
    """Parses ``"1e-3,2e-3"`` into floats (``""`` gives ``[]``); errors name ``what``."""
    try:
        return [float(t) for t in _split(text, what)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, what: str) -> list[int]:
    """Parses ``"0,1,2"`` into ints; raises UserError naming ``what``."""
    try:
        return [int(t) for t in _split(text, what)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_elrs(text: str, flag: str = "--elrs") -> list[float]:
    """Parses a list of ELRs: non-empty, each finite and > 0, no repeats."""
    from three_regimes_jax.config import check_elrs

    return list(check_elrs(parse_floats(text, flag), flag))


# Flags of the run commands that are not config fields.
COMMAND_FLAGS = ("--out", "--overwrite", "--quiet", "--resume", "--from-init")
# How the processes of ``sweep --distributed`` find each other: where a run executes, not what
# it computes, so not part of its config.
COMMAND_FLAGS += ("--distributed", "--coordinator", "--num-processes", "--process-id")


def add_config_flags(p, sections: Sequence[str], *, include=None, exclude=(), required=()) -> None:
    """Adds one flag per field of the config ``sections`` (see ``config.option``).

    Defaults are not repeated here: a flag that is not given is absent from the
    parsed namespace, and the config's own default applies.
    """
    from three_regimes_jax.config import fields_of

    for section in sections:
        g = p.add_argument_group(section)
        for f in fields_of(section):
            m = f.metadata
            if m["flag"] in exclude or (include is not None and m["flat"] not in include):
                continue
            kw = {"dest": m["flat"], "default": argparse.SUPPRESS}
            if m["flag"] in required:
                kw["required"] = True
            default = "" if m["flag"] in required else f" (default: {_shown(f.default)})"
            if m["choices"]:
                default += f"; one of: {', '.join(m['choices'])}"
            kw["help"] = m["help"] + default
            if m["kind"] == "bool":
                g.add_argument(m["flag"], action="store_true", **kw)
                continue
            kw["type"] = _flag_type(m["kind"], m["flag"])
            g.add_argument(m["flag"], **kw)


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "none"
    return str(value)


def _flag_type(kind: str, flag: str):
    def parse(text: str):
        try:
            if kind == "floats":
                return tuple(parse_floats(text, flag))
            if kind == "ints":
                return tuple(parse_ints(text, flag))
            if kind == "strs":
                return tuple(t.strip() for t in text.split(",") if t.strip())
            if kind in ("int", "opt_int"):
                return int(text)
            if kind in ("float", "opt_float"):
                return float(text)
            return text
        except (UserError, ValueError) as e:
            raise argparse.ArgumentTypeError(
                str(e)
                if isinstance(e, UserError)
                else f"invalid {kind.removeprefix('opt_')}: {text!r}"
            ) from None

    return parse


def config_from_args(args, **overrides):
    """The :class:`~three_regimes_jax.config.Config` of the parsed config flags."""
    from three_regimes_jax.config import Config, flat_names

    names = flat_names()
    given = {k: v for k, v in vars(args).items() if k in names}
    mode = given.get("train_mode", "sphere")
    other = "sphere" if mode == "whole" else "whole"
    for flat in MODE_FLAGS[other]:
        if flat in given:
            flag = "--" + flat.replace("_", "-")
            hint = "; --train whole sweeps --lrs" if flat == "elrs" else ""
            raise UserError(f"{flag} applies to --train {other} only{hint}")
    return Config.from_flat(**{**given, **overrides})


#: Flat names of the flags that apply to one training mode only.
MODE_FLAGS = {"sphere": ("elrs", "random_walk", "random_walk_from"), "whole": WHOLE_ONLY}
#: ``--train`` and the whole-space flags (commands that work on the sphere only leave them out).
WHOLE_FLAGS = ("--train", *("--" + f.replace("_", "-") for f in MODE_FLAGS["whole"]))
