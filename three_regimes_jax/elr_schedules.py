"""ELR schedule strings (``--elr-schedules``): parsed without JAX, for configs and the engine.

The schedules themselves are :mod:`three_regimes_jax.engine.schedules`.
"""

from __future__ import annotations

import numpy as np

from three_regimes_jax.errors import UserError

KINDS = ("constant", "cosine", "step", "warmup", "warmup_cosine", "regime")
MAX_MILESTONES = 4
#: Floats per schedule: ``step``: gamma and up to 4 milestones (unused: inf).
N_ARGS = 1 + MAX_MILESTONES


def parse_schedule(spec: str, elr: float) -> tuple[int, np.ndarray]:
    """``(kind, args)`` of a schedule string (see ``engine.schedules``) for a member at ``elr``.

    Raises:
      UserError: an unknown kind or malformed arguments (one line).
    """
    name, _, rest = str(spec).strip().partition(":")
    args = np.full(N_ARGS, np.inf, np.float32)
    try:
        if name in ("constant", "cosine") and not rest:
            pass
        elif name == "step":
            gamma, _, at = rest.partition("@")
            epochs = [float(e) for e in at.split("+")]
            if not 0 < float(gamma) or not epochs or len(epochs) > MAX_MILESTONES:
                raise ValueError
            args[0], args[1 : 1 + len(epochs)] = float(gamma), sorted(epochs)
        elif name in ("warmup", "warmup_cosine"):
            args[0] = float(rest)
            if args[0] <= 0:
                raise ValueError
        elif name == "regime":
            elr2, _, at = rest.partition("@")
            if float(elr2) <= 0 or float(at) < 0:
                raise ValueError
            args[0], args[1] = float(elr2) / float(elr), float(at)
        else:
            raise ValueError
    except ValueError:
        raise UserError(
            f"bad ELR schedule {spec!r}; write constant, cosine, step:GAMMA@E1+E2, warmup:W, "
            "warmup_cosine:W or regime:ELR2@EPOCH"
        ) from None
    return KINDS.index(name), args


__all__ = ["KINDS", "MAX_MILESTONES", "N_ARGS", "parse_schedule"]
