"""Output directories: checked before any work, owned, locked, and clean after a failure.

Every command that writes a directory (``sweep``, ``finetune``,
``find-transitions``, ``toy``) goes through :func:`claim`:

1. **Checked first.** The path is not empty or blank, is not a file, and its
   nearest existing ancestor is a writable directory
   (:func:`check_out_path`); it does not overlap a path the command reads
   (``finetune --from``, ``--random-walk-from``); and it is new, empty, or
   holds this command's own output of the same run.  Anything else (another
   run, another command's output, files three-regimes did not write) is
   refused unless ``overwrite``; even then, files three-regimes did not
   write are never replaced or deleted.
2. **Owned.** ``DIR/.three-regimes.json`` records which command wrote the
   directory and with which config, from the moment it is claimed; so a
   directory left by a kill at any moment is recognised as this run's own
   and can be resumed or restarted without ``--overwrite``.
3. **Locked.** ``DIR/.lock`` is held with ``fcntl.flock`` for the whole
   command; a second writer fails at once with the first one's process id.
   The kernel drops the lock of a killed process, so a stale lock file is
   simply taken over.
4. **Clean after a failure.** On any exception (a bad input found late, a full disk, Ctrl-C)
   everything the command wrote is removed again except what the caller's ``keep`` names (e.g.
   checkpoints ``--resume`` can use); a directory the command created is removed entirely when
   nothing is kept. Ctrl-C becomes :class:`Interrupted`, whose message says what was kept.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.files import TEMP_SUFFIX, remove_temp_files, write_json

OWNER_FILE = ".three-regimes.json"
LOCK_FILE = ".lock"
# Every name a command writes at the top of its output directory; --overwrite
# removes exactly these (and round_<k> directories) from a run it replaces.
OUTPUT_NAMES = frozenset(
    "config.json metrics.npz summary.json MANIFEST.sha256 checkpoints regimes.json figures "
    "toy.npz toy_loss.png toy_group_elr.png transitions.json".split()
)
_DESCRIBE = {
    "sweep": "a sweep's results",
    "finetune": "a fine-tune's results",
    "toy": "a toy run",
    "find-transitions": "a find-transitions search",
}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a command; the message says what was kept on disk."""


def check_out_path(out: str | os.PathLike | None, flag: str = "--out") -> Path:
    """Checks, creating nothing, that directory ``out`` exists or can be created.

    Raises:
      UserError: ``out`` is empty or blank, is a file, or its nearest
        existing ancestor is not a writable directory.
    """
    text = "" if out is None else os.fspath(out)
    if not text.strip():
        raise UserError(f"{flag} is empty; give a directory path")
    if "\0" in text:
        raise UserError(f"{flag} {text!r} contains a NUL character; give a directory path")
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file; pass a directory path")
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{flag} {path} cannot be written ({probe} is a file); pick another")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written ({probe} is not writable); pick another")
    return path


def check_out_file(
    out: str | os.PathLike,
    suffix: str,
    *,
    overwrite: bool,
    ours: Callable[[Path], bool],
    flag: str = "--out",
) -> Path:
    """Checks, creating nothing, that file ``out`` can be written by this command.

    Raises:
      UserError: ``out`` is blank, lacks ``suffix``, is a directory, its
        directory cannot be created or written, or it exists and either
        ``overwrite`` is not given or ``ours(out)`` says another command wrote it.
    """
    text = "" if out is None else os.fspath(out)
    if not text.strip():
        raise UserError(f"{flag} is empty; give a file path ending in {suffix}")
    path = Path(text)
    if not path.name.endswith(suffix) or path.name == suffix:
        raise UserError(f"{flag} must name a {suffix} file, got {text!r}")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file path ending in {suffix}")
    check_out_path(path.parent if str(path.parent) else ".", flag)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise UserError(f"{flag} {path} exists; pick another file or pass --overwrite")
        if not ours(path):
            raise UserError(
                f"{flag} {path} was not written by this command, so --overwrite will not "
                "replace it; pick another file"
            )
    return path


def overlaps(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths are the same, or one lies inside the other (symlinks resolved)."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


def read_owner(path: str | os.PathLike) -> dict[str, Any] | None:
    """Which command wrote directory ``path`` (``{"command", "config"}``), None if unknown.

    Directories written before owner records existed are recognised by their
    files: ``config.json`` with a ``kind`` (sweep, fine-tune), ``toy.npz``,
    ``transitions.json``, or checkpoints whose meta holds the config.
    """
    path = Path(path)
    try:
        owner = json.loads((path / OWNER_FILE).read_text())
        if isinstance(owner, dict) and isinstance(owner.get("command"), str):
            return owner
    except (OSError, ValueError):
        pass
    try:
        cfg = json.loads((path / "config.json").read_text())
        if isinstance(cfg, dict) and cfg.get("kind") in ("sweep", "finetune"):
            return {"command": cfg["kind"], "config": cfg}
    except (OSError, ValueError):
        pass
    if (path / "checkpoints").is_dir():  # a run interrupted before owner records
        from three_regimes_jax.storage.checkpoint import read_meta

        try:
            cfg = read_meta(path)["config"]
            kind = cfg.get("kind", "sweep") if isinstance(cfg, dict) else "sweep"
            return {"command": kind, "config": cfg}
        except (UserError, AttributeError):
            pass
    if (path / "toy.npz").is_file():
        return {"command": "toy", "config": None}
    if (path / "transitions.json").is_file():
        return {"command": "find-transitions", "config": None}
    return None


def describe(owner: Mapping[str, Any]) -> str:
    """``"a sweep's results"`` etc. for an owner record."""
    return _DESCRIBE.get(owner["command"], f"output of `{owner['command']}`")


def _entries(path: Path) -> list[str]:
    """Names in ``path`` that count as content (not the lock or temporary files)."""
    if not path.is_dir():
        return []
    return sorted(n for n in os.listdir(path) if n != LOCK_FILE and not n.endswith(TEMP_SUFFIX))


def check_owner(
    path: Path,
    command: str,
    config: Mapping[str, Any] | None,
    overwrite: bool,
    differ: Callable[[Any, Any], list[str]],
) -> None:
    """Refuses a ``path`` that holds something other than this run's own output.

    Args:
      path: the output directory.
      command: the command that is about to write it.
      config: its config (compared with the owner's by ``differ``).
      overwrite: allow replacing another three-regimes output.
      differ: ``(old_config, config) -> names that differ``.

    Raises:
      UserError: ``path`` holds another run or command's output (without
        ``overwrite``), or files three-regimes did not write (without
        ``overwrite``; with it, when their names clash with our outputs).
    """
    names = _entries(path)
    if not names:
        return
    owner = read_owner(path)
    if owner is None:
        clash = sorted(set(names) & OUTPUT_NAMES)
        if not overwrite:
            raise UserError(
                f"--out {path} is not empty and was not written by three-regimes "
                f"(it holds {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}); "
                "pick an empty or new directory"
            )
        if clash:
            raise UserError(
                f"--out {path} holds {', '.join(clash)}, which three-regimes did not write and "
                "--overwrite would replace; pick another --out"
            )
        return
    if owner["command"] != command:
        if not overwrite:
            raise UserError(
                f"--out {path} holds {describe(owner)}; pick another --out or pass "
                "--overwrite to replace it"
            )
        return
    diff = differ(owner.get("config"), config)
    if diff and not overwrite:
        raise UserError(
            f"--out {path} already holds a different run (differs in: "
            f"{', '.join(diff)}); pick another --out or pass --overwrite"
        )


def _remove(path: Path) -> None:
    is_tree = path.is_dir() and not path.is_symlink()
    shutil.rmtree(path, ignore_errors=True) if is_tree else path.unlink(missing_ok=True)


def remove_outputs(path: Path) -> None:
    """Removes every three-regimes output in ``path`` (before ``--overwrite`` rewrites it)."""
    for name in os.listdir(path):
        if name in OUTPUT_NAMES or (name.startswith("round_") and name[6:].isdigit()):
            _remove(path / name)


def _make_dirs(path: Path) -> Path | None:
    """Creates ``path`` and its missing parents; returns the top-most one created (or None)."""
    top = None
    probe = path.absolute()
    while not probe.exists():
        top = probe
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True)
    return top


def _remove_empty(path: Path, top: Path | None) -> None:
    """Removes ``path`` and its parents up to ``top`` while they are empty (``rmdir``)."""
    probe = path.absolute()
    with contextlib.suppress(OSError):  # a concurrent writer's files (its lock) stop it
        while top is not None and probe.is_relative_to(top.absolute()):
            probe.rmdir()
            probe = probe.parent


def busy_message(path: Path, pid: str) -> str:
    """The error of a directory another process is writing."""
    who = f"process {pid}" if pid else "another process"
    return (
        f"--out {path} is being written by {who} (three-regimes); wait for it to finish "
        "or pick another --out"
    )


def _lock(path: Path) -> int:
    """Takes ``path/.lock`` (exclusive, non-blocking) and writes our pid into it."""
    lock = path / LOCK_FILE
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise UserError(busy_message(path, pid)) from None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else the previous holder removed the file before we locked it
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:  # e.g. a full disk: the lock file is ours to remove
                _unlock(path, fd)
                raise
            return fd
        os.close(fd)


def check_not_busy(path: str | os.PathLike, flag: str = "") -> None:
    """Raises a one-line UserError if another three-regimes process is writing ``path``."""
    lock = Path(path) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if pid == str(os.getpid()):
            return  # this process holds it (a nested check of a claimed directory)
        raise UserError(flag + busy_message(Path(path), pid).removeprefix("--out ")) from None
    finally:
        os.close(fd)


def _clean_failed(
    path: Path,
    before: set[str],
    created: Path | None,
    keep: Callable[[Path], Mapping[str, str]] | None,
) -> str:
    """Removes what a failed command wrote, but what ``keep`` names; returns what was kept."""
    remove_temp_files(path)
    kept = dict(keep(path)) if keep is not None else {}
    if not kept:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
            return "nothing was written"
        for name in set(os.listdir(path)) - before:
            _remove(path / name)
        return "nothing was written"
    for name in set(os.listdir(path)) - before - set(kept) - {OWNER_FILE, LOCK_FILE}:
        _remove(path / name)
    return "kept " + "; ".join(kept.values())


def os_error_message(e: OSError, path: Path | str) -> str:
    """One line for an OS error while writing ``path`` (e.g. a full disk)."""
    what = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EMFILE: "too many open files",
    }.get(e.errno, e.strerror or type(e).__name__)
    where = f" ({e.filename})" if e.filename else ""
    return f"cannot write {path}: {what}{where}"


@contextlib.contextmanager
def claim(
    out: str | os.PathLike,
    *,
    command: str,
    config: Mapping[str, Any] | None,
    overwrite: bool = False,
    reads: Iterable[str | os.PathLike] = (),
    differ: Callable[[Any, Any], list[str]] | None = None,
    keep: Callable[[Path], Mapping[str, str]] | None = None,
) -> Iterator[Path]:
    """Claims directory ``out`` for one command (see the module docstring).

    Args:
      out: the output directory.
      command: the command's name, recorded as the owner.
      config: its configuration (JSON), recorded and compared on reruns.
      overwrite: replace another three-regimes output in ``out``.
      reads: paths the command reads, which ``out`` must not overlap.
      differ: compares an owner's config with ``config`` (default: ``!=``).
      keep: after a failure, ``path -> {name: description}`` of the entries
        worth keeping (e.g. resumable checkpoints).

    Yields:
      The directory (created, locked, owned).

    Raises:
      UserError: ``out`` is unusable, overlaps a read path, holds something
        else, or is being written by another process; an OS error while
        writing (e.g. a full disk) as one line.
      Interrupted: on Ctrl-C, saying what was kept.
    """
    if differ is None:

        def differ(a, b):
            if isinstance(a, Mapping) and isinstance(b, Mapping):
                return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            return [] if a == b else ["config"]

    path = check_out_path(out)
    for src in reads:
        if src is not None and overlaps(path, src):
            raise UserError(
                f"--out {path} overlaps {src}, which this command reads; pick another --out"
            )
    check_not_busy(path, flag="--out ")
    check_owner(path, command, config, overwrite, differ)
    created = _make_dirs(path)
    try:
        fd = _lock(path)
    except BaseException:
        _remove_empty(path, created)
        raise
    try:
        before = set(os.listdir(path))
        try:
            check_owner(path, command, config, overwrite, differ)  # again, under the lock
            remove_temp_files(path)
            if overwrite and read_owner(path) is not None:
                remove_outputs(path)
                before -= OUTPUT_NAMES
            write_json(path / OWNER_FILE, {"command": command, "config": config})
            yield path
        except KeyboardInterrupt:
            kept = _clean_failed(path, before, created, keep)
            raise Interrupted(f"interrupted; {kept}") from None
        except OSError as e:
            kept = _clean_failed(path, before, created, keep)
            raise UserError(f"{os_error_message(e, path)}; {kept}") from None
        except BaseException:
            _clean_failed(path, before, created, keep)
            raise
    finally:
        _unlock(path, fd)


def _unlock(path: Path, fd: int) -> None:
    """Removes ``path/.lock`` if it is still the file we locked, then releases it."""
    lock = path / LOCK_FILE
    try:
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            lock.unlink()
    except OSError:
        pass
    os.close(fd)


__all__ = [
    "LOCK_FILE",
    "OUTPUT_NAMES",
    "OWNER_FILE",
    "Interrupted",
    "check_not_busy",
    "check_out_file",
    "check_out_path",
    "claim",
    "overlaps",
    "read_owner",
]
