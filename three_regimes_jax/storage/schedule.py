"""Which epochs to checkpoint: the paper's log-spaced schedule, every N, explicit ones.

Pure Python.  Epoch ``E`` means the state after ``E`` epochs of training
(0: the initial state); a fine-tune from epoch ``E`` runs epochs ``E..end``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from three_regimes_jax.errors import UserError


def nonneg_int(value: Any, what: str) -> int:
    """``value`` as an ``int`` >= 0 (Python or numpy integer; not a bool).

    Args:
      value: the value to check.
      what: what it is, for the error, e.g. ``"the checkpoint epoch"``.

    Returns:
      ``int(value)``.

    Raises:
      UserError: ``value`` is not a whole number or is negative.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise UserError(f"{what} must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise UserError(f"{what} must be >= 0, got {value}")
    return int(value)


def log_schedule(max_epoch: int) -> list[int]:
    """The paper's log-spaced checkpoint epochs up to ``max_epoch``.

    Every epoch below 20, every 5th below 100, every 10th below 200, every
    50th below 1000, every 100th below 2000, and so on by decades: below
    ``2 * 10**k`` every ``10**(k-1)``-th epoch, below ``10**(k+1)`` every
    ``5 * 10**(k-1)``-th (so every 500th below 10000, every 1000th below
    20000, ...).  Epochs 0 and ``max_epoch`` are always included.

    Args:
      max_epoch: the last epoch of the run (>= 0).

    Returns:
      Sorted epochs, e.g. ``log_schedule(250)`` is ``0..19, 20, 25, ..., 95,
      100, 110, ..., 190, 200, 250``.

    Raises:
      UserError: ``max_epoch`` is negative.
    """
    max_epoch = nonneg_int(max_epoch, "the number of epochs")
    epochs = {0, max_epoch}
    e, k = 0, 1  # current epoch; decade: [10**k, 10**(k+1)) after the first 20
    while e <= max_epoch:
        epochs.add(e)
        decade = 10**k
        step = decade // 10 if e < 2 * decade else decade // 2
        e += step
        if e >= 10 * decade:
            k += 1
    return sorted(epochs)


def checkpoint_epochs(
    end_epoch: int,
    epochs: Iterable[int] = (),
    every: int = 0,
    log: bool = False,
    *,
    start: int = 0,
    always: bool = False,
) -> list[int]:
    """The epochs to checkpoint in ``[start, end_epoch]``: explicit, every N-th, log, combined.

    When anything is chosen (any of ``epochs``, ``every``, ``log``), or
    ``always`` is set, ``start`` and ``end_epoch`` are included: the first and
    the last state are what fine-tuning and interpolation start from.

    Args:
      end_epoch: the last epoch of the run (>= ``start``).
      epochs: explicit epochs, each in ``[start, end_epoch]``.
      every: also every ``every``-th epoch counted from ``start`` (``start``,
        ``start + every``, ...); 0: off.
      log: also :func:`log_schedule` of ``end_epoch``, restricted to
        ``[start, end_epoch]``.
      start: the first epoch of the run (a fine-tune's source epoch).
      always: include ``start`` and ``end_epoch`` even when nothing else is chosen.

    Returns:
      Sorted distinct epochs; empty when nothing is chosen and not ``always``.

    Raises:
      UserError: an epoch outside ``[start, end_epoch]``, a negative
        ``every``, or ``start`` after ``end_epoch``.
    """
    end = nonneg_int(end_epoch, "the number of epochs")
    start = nonneg_int(start, "the first epoch")
    if start > end:
        raise UserError(f"the first epoch {start} is after the last epoch {end}")
    every = nonneg_int(every, "the checkpoint interval")
    chosen = {nonneg_int(e, "a checkpoint epoch") for e in epochs}
    late = sorted(e for e in chosen if e > end)
    early = sorted(e for e in chosen if e < start)
    if late or early:
        what = f"after the last epoch {end}" if late else f"before the first epoch {start}"
        raise UserError(
            f"checkpoint epoch {(late or early)[0]} is {what}; "
            f"give epochs between {start} and {end}"
        )
    if every:
        chosen.update(range(start, end + 1, every))
    if log:
        chosen.update(e for e in log_schedule(end) if e >= start)
    if chosen or always:
        chosen.update((start, end))
    return sorted(chosen)


__all__ = ["checkpoint_epochs", "log_schedule", "nonneg_int"]
