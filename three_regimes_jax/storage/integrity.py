"""SHA-256 manifests: what was written is what is read back.

A manifest is a file ``MANIFEST.sha256`` in the ``sha256sum`` format (one
``<hex digest>  <relative path>`` line per file, sorted), so it can also be
checked by hand with ``cd DIR && sha256sum -c MANIFEST.sha256``.  It is
written atomically *after* the files it lists, so its presence means that
they were complete; a directory whose format promises a manifest but lacks it
was interrupted while being written.

- A results directory lists ``metrics.npz``, ``summary.json`` and
  ``config.json`` (:mod:`~three_regimes_jax.storage.results`).
- A checkpoint step directory ``checkpoints/<E>/`` lists every file Orbax
  wrote into it (:mod:`~three_regimes_jax.storage.checkpoint`).

:func:`verify_manifest` raises a one-line
:class:`~three_regimes_jax.errors.UserError` naming the first file that is
missing, truncated or changed, so corrupt data is never restored or plotted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from three_regimes_jax.errors import UserError
from three_regimes_jax.storage.files import atomic_write

MANIFEST = "MANIFEST.sha256"
_CHUNK = 1 << 20
_HEX = "0123456789abcdef"


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def all_files(directory: Path) -> list[str]:
    """Every regular file below ``directory`` (relative POSIX paths, sorted), but the manifest."""
    out = []
    for root, _, names in os.walk(directory):
        for n in names:
            rel = (Path(root) / n).relative_to(directory).as_posix()
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def manifest_text(directory: str | os.PathLike, files: Iterable[str]) -> str:
    """The manifest of ``files`` (paths relative to ``directory``)."""
    directory = Path(directory)
    return "".join(f"{sha256_file(directory / f)}  {f}\n" for f in sorted(files))


def write_manifest(directory: str | os.PathLike, files: Iterable[str] | None = None) -> Path:
    """Writes ``directory/MANIFEST.sha256`` atomically; ``files`` None: every file below it."""
    directory = Path(directory)
    names = all_files(directory) if files is None else list(files)
    path = directory / MANIFEST
    atomic_write(path, manifest_text(directory, names).encode())
    return path


def has_manifest(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a manifest."""
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """Relative path -> hex digest, from ``directory/MANIFEST.sha256``.

    Raises:
      UserError: the manifest is missing or not in the ``sha256sum`` format.
    """
    path = Path(directory) / MANIFEST
    try:
        text = path.read_text("ascii")
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the data it certifies is incomplete") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is unreadable ({type(e).__name__}); the data is damaged") from None
    entries = {}
    for line in text.splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or not name or len(digest) != 64 or set(digest) - set(_HEX):
            raise UserError(f"{path} is damaged (bad line {line[:40]!r}); the data is unverifiable")
        entries[name] = digest
    if not entries:
        raise UserError(f"{path} is empty; the data it certifies is incomplete")
    return entries


def manifest_problem(directory: str | os.PathLike) -> str | None:
    """Why ``directory``'s files do not match its manifest (short, relative names), or None.

    Raises:
      UserError: the manifest itself is missing or damaged.
    """
    directory = Path(directory)
    for name, digest in read_manifest(directory).items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            actual = sha256_file(path)
        except OSError as e:
            return f"{name} cannot be read: {e.strerror}"
        if actual != digest:
            return f"{name} changed after it was written: its SHA-256 does not match"
    return None


def verify_manifest(directory: str | os.PathLike, what: str) -> None:
    """Checks every file listed in ``directory``'s manifest against its digest.

    Args:
      directory: the directory holding ``MANIFEST.sha256``.
      what: how to name the data in the error, e.g. ``"results in DIR"``.

    Raises:
      UserError: a listed file is missing, or its bytes differ from when it
        was written (truncated, bit-flipped, replaced).
    """
    problem = manifest_problem(directory)
    if problem is not None:
        raise UserError(f"{what} are corrupt ({problem}); recompute them or restore a copy")


__all__ = [
    "MANIFEST",
    "all_files",
    "has_manifest",
    "manifest_problem",
    "read_manifest",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]
