"""Atomic file writes: a file is either its old version or its complete new one.

Every file is written to a temporary file beside its target (``.NAME.XXXX.tmp``)
and renamed over it with ``os.replace``; an interrupted write leaves at most
such a temporary file, which :func:`remove_temp_files` clears.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically: a temporary file beside it, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=True) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically writes ``obj`` as indented JSON."""
    atomic_write(path, _json_bytes(obj))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed ``.npz`` whose bytes depend only on the arrays.

    ``np.savez`` stamps each zip entry with the current time, so two runs with
    equal arrays give different files; here every entry has a fixed timestamp,
    so equal results give byte-identical files (e.g. a resumed run).
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(value), allow_pickle=False)
    return buf.getvalue()


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Atomically writes a deterministic compressed ``.npz`` (see :func:`npz_bytes`)."""
    atomic_write(path, npz_bytes(arrays))


def remove_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Removes the temporary files interrupted atomic writes left in ``directory``."""
    directory = Path(directory)
    gone = []
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(".") and p.name.endswith(TEMP_SUFFIX) and p.is_file():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone
