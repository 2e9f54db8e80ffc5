"""Orbax's noise and failures, turned into silence and one-line errors.

- :func:`quiet_orbax` silences Orbax's absl log lines while it runs.
- :func:`drop_closed_loop_errors` hides the stray ``Event loop is closed``
  tracebacks a failed Orbax read leaves behind (a process-wide
  ``sys.unraisablehook`` wrapper, installed once, before the first read).
- :func:`short_reason` condenses an Orbax/TensorStore exception to one line.
- :func:`unreadable` and :func:`orbax_failure` build the
  :class:`~three_regimes_jax.errors.UserError` of an unreadable checkpoint.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from three_regimes_jax.errors import UserError

# Longest reason kept from an Orbax/TensorStore exception.
_MAX_REASON = 200


@contextlib.contextmanager
def quiet_orbax() -> Iterator[None]:
    """Silences Orbax's absl log lines (warnings, info) while it runs.

    Orbax logs through absl, i.e. the Python logger ``"absl"``, which prints
    ``WARNING:absl:...`` lines on stderr; CLI users should only see our own
    progress and errors (Orbax failures are raised and turned into one line).
    """
    logger = logging.getLogger("absl")
    old = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(old)


def drop_closed_loop_errors() -> None:
    """Hides the stray ``RuntimeError: Event loop is closed`` of a failed Orbax read.

    When one array of a checkpoint cannot be read, Orbax closes its asyncio
    loop while TensorStore reads of other arrays are still running; those
    finish on a TensorStore thread (at once, or when collected) and call back
    into the closed loop, which Python reports on stderr as unraisable
    tracebacks.  The read has already failed with a clear error, so before
    any Orbax read this wraps ``sys.unraisablehook`` (once per process) to
    drop exactly that report; everything else goes to the previous hook.
    """
    prev = sys.unraisablehook
    if getattr(prev, "_drops_closed_loop_errors", False):
        return

    def hook(unraisable: Any) -> None:
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        prev(unraisable)

    hook._drops_closed_loop_errors = True
    sys.unraisablehook = hook


def short_reason(e: BaseException, step_dir: Path | None = None) -> str:
    """A one-line, bounded reason from an Orbax/TensorStore exception.

    TensorStore errors (``"DATA_LOSS: Error opening ... local file "F": cause
    [tensorstore_spec=...]"``) become ``"DATA_LOSS reading F: cause"``, file
    paths relative to ``step_dir``; other exceptions ``"Type: first line"``.
    """
    text = str(e).strip()
    text = text.splitlines()[0] if text else ""
    text = re.sub(r"<bound method [^>]*>|<[a-zA-Z_.]+ object at 0x[0-9a-f]+>", "...", text)
    text = text.split(" [tensorstore_spec", 1)[0].split(" [source locations", 1)[0]

    def rel(name: str) -> str:
        if step_dir is not None and name.startswith(str(step_dir)):
            return name[len(str(step_dir)) :].lstrip("/") or "."
        return name

    code = re.match(r"([A-Z][A-Z_]+): ", text)
    files = re.findall(r'local file "([^"]+)"', text)
    if code and files:
        head, _, cause = text.rpartition('": ')
        if head and "local file" not in cause:
            text = f"{code.group(1)} reading {rel(files[-1])}: {cause}"
        else:
            text = re.sub(r'local file "([^"]+)"', lambda m: f'"{rel(m.group(1))}"', text)
    else:
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def unreadable(epoch: int, ckdir: Path, reason: str) -> UserError:
    """The error for the checkpoint of ``epoch`` in ``ckdir`` that cannot be read."""
    return UserError(
        f"checkpoint at epoch {epoch} in {ckdir} is unreadable ({reason}); "
        "delete it or resume from an earlier one"
    )


def orbax_failure(epoch: int, ckdir: Path, e: BaseException) -> UserError:
    """:func:`unreadable` for a failed Orbax read, after flushing its late callbacks."""
    gc.collect()  # runs abandoned reads' callbacks now, through drop_closed_loop_errors' hook
    return unreadable(epoch, ckdir, short_reason(e, ckdir / str(epoch)))


__all__ = [
    "drop_closed_loop_errors",
    "orbax_failure",
    "quiet_orbax",
    "short_reason",
    "unreadable",
]
