"""The command line's last line of defence: every failure is one line on stderr.

- Bad input and unusable files (:class:`~three_regimes_jax.errors.UserError`,
  and OS errors such as a full disk) print ``three-regimes: error: ...`` and
  exit 2.
- Ctrl-C exits 130 and says what was kept on disk
  (:class:`~three_regimes_jax.storage.outdir.Interrupted`).
- Anything unexpected exits 1 with one line naming a log file in the
  temporary directory that holds the traceback; no traceback reaches the
  terminal.
"""

from __future__ import annotations

import os
import sys
import tempfile
import traceback
import warnings
from collections.abc import Callable

from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.outdir import Interrupted, os_error_message


def guarded(command: Callable[[], int], prog: str) -> int:
    """Runs ``command`` and turns every failure into one line and an exit code.

    A process of a ``--distributed`` run that fails exits at once, without JAX's
    shutdown barrier: the other processes then see it gone within seconds (their
    next collective fails) instead of waiting for it.
    """
    code = _guarded(command, prog)
    if code and _multi_process():
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(code)
    return code


def _multi_process() -> bool:
    """Whether JAX's multi-process runtime runs (without importing JAX)."""
    jax = sys.modules.get("jax")
    try:
        return jax is not None and jax.distributed.is_initialized()
    except Exception:  # noqa: BLE001 - an older JAX without is_initialized
        return False


def _guarded(command: Callable[[], int], prog: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # NaN/overflow of diverged members
            return command()
    except UserError as e:
        _error(prog, str(e))
        return 2
    except Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except OSError as e:
        _error(prog, os_error_message(e, e.filename or "a file"))
        return 2
    except Exception:  # noqa: BLE001 - the last line of defence: one line and a log
        log = write_log(prog)
        print(
            f"{prog}: internal error: {last_line()}; the traceback is in {log} (please report it)",
            file=sys.stderr,
        )
        return 1
    finally:
        sys.stderr.flush()


def _error(prog: str, message: str) -> None:
    """Prints one error line (newlines in the message are folded)."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)


def last_line() -> str:
    """``Type: message`` of the exception being handled, folded to one short line."""
    e = sys.exc_info()[1]
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def write_log(prog: str) -> str:
    """Writes the current traceback to a new file in the temporary directory; its path."""
    try:
        fd, path = tempfile.mkstemp(prefix=f"{prog}-error-", suffix=".log")
        with open(fd, "w") as f:
            f.write(f"{prog} {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
        return path
    except OSError:
        return "(no log: the temporary directory is not writable)"


__all__ = ["guarded", "last_line", "write_log"]
