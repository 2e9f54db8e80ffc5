"""A fuzz set of bad inputs for every ``three-regimes`` subcommand, and its runner.

Each case is one valid command with exactly one thing made wrong: a bad flag
value, a damaged input file (truncated, bit-flipped, emptied, wrong JSON
type), or an unusable output location.  A case passes when the command

- exits 2 (or 1 with the path of a log file),
- prints at most one line on stderr and no traceback,
- changes or creates no file outside its ``--out`` (and leaves no ``--out``
  behind when it did not exist).

The cases are in ``tests/fuzz_cases.py``. ``tests/test_reliability.py`` runs
a seeded sample in-process in CI and the whole set as ``slow``;
``python tests/fuzz.py [--subprocess] [--sample N]`` prints the table of the
closing note of issue 11 (tried, clean exit 2, traceback,
wrongly accepted, files changed outside ``--out``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_cases import (  # noqa: E402 (the case table; re-exported)
    _CKPT_CORRUPTIONS,
    ROOT,
    SOURCE_ARGS,
    TINY,
    TOY_ARGS,
    Case,
    _bad_shape,
    _drop_array,
    _empty,
    _flip,
    _truncate,
    cases,
)

# --------------------------------------------------------------------------- the sandbox


def make_fixture(root: Path, run: Callable[[list[str]], int]) -> Path:
    """A checkpointed sweep ``root/src``, a toy run ``root/toy`` and a foreign dir."""
    root.mkdir(parents=True, exist_ok=True)
    assert run([*SOURCE_ARGS, "--quiet", "--out", str(root / "src")]) == 0
    assert run([*TOY_ARGS, "--out", str(root / "toy")]) == 0
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("not ours\n")
    (root / "a_file").write_text("a file\n")
    return root


def _snapshot(box: Path, skip: Path | None) -> dict[str, str]:
    out = {}
    for p in sorted(box.rglob("*")):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        if p.is_file():
            out[str(p.relative_to(box))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(box)) + "/"] = ""
    return out


@dataclass
class Outcome:
    case: str
    rc: int
    stderr: str
    changed: list[str]
    leftover: bool

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr or len(self.stderr.strip().splitlines()) > 1

    @property
    def clean(self) -> bool:
        logged = self.rc == 1 and "the traceback is in" in self.stderr
        return (self.rc == 2 or logged) and not self.traceback

    @property
    def accepted(self) -> bool:
        return self.rc == 0


def run_case(case: Case, fixture: Path, work: Path, run: Callable[[list[str]], tuple[int, str]]):
    """Runs one case in a fresh copy of the fixture under ``work``; its :class:`Outcome`."""
    box = work
    if box.exists():
        _make_writable(box)
        shutil.rmtree(box)
    shutil.copytree(fixture, box)
    (box / "ro").mkdir()
    shutil.copytree(box / "src", box / "ro" / "src")
    for p in (box / "ro").rglob("*"):
        p.chmod(0o555 if p.is_dir() else 0o444)
    (box / "ro").chmod(0o555)
    if case.damage is not None:
        case.damage(box)
    subs = {
        "{SRC}": str(box / "src"),
        "{TOY}": str(box / "toy"),
        "{FILE}": str(box / "a_file"),
        "{RO}": str(box / "ro"),
        "{FOREIGN}": str(box / "foreign"),
        "{MISSING}": str(box / "missing"),
        "{OUT}": str(box / "out"),
    }

    def sub(s: str) -> str:
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    argv = [sub(a) for a in case.argv]
    out = Path(sub(case.out)) if case.out else None
    existed = out is not None and out.exists()
    skip = out if out is not None and not existed else None  # a refused command changes nothing
    before = _snapshot(box, skip)
    rc, err = run(argv)
    after = _snapshot(box, skip)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    leftover = out is not None and not existed and out.exists() and rc != 0
    return Outcome(case.name, rc, err, changed, leftover)


def _make_writable(box: Path) -> None:
    for p in [box, *box.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)


def in_process(argv: list[str]) -> tuple[int, str]:
    """Runs ``main(argv)`` here, capturing stdout and stderr."""
    from three_regimes_jax.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, err.getvalue()


def in_subprocess(argv: list[str]) -> tuple[int, str]:
    """Runs ``python -m three_regimes_jax.cli argv`` in a fresh process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    p = subprocess.run(
        [sys.executable, "-m", "three_regimes_jax.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    return p.returncode, p.stderr


def table(outcomes: list[Outcome]) -> str:
    """The closing note's table."""
    rows = [
        ("tried", len(outcomes)),
        ("clean exit 2 (or 1 with a log)", sum(o.clean for o in outcomes)),
        ("traceback or more than one stderr line", sum(o.traceback for o in outcomes)),
        ("wrongly accepted (exit 0)", sum(o.accepted for o in outcomes)),
        ("files changed outside --out", sum(bool(o.changed) for o in outcomes)),
        ("--out left behind after a failure", sum(o.leftover for o in outcomes)),
    ]
    lines = ["| outcome | cases |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subprocess", action="store_true", help="one process per case")
    p.add_argument("--sample", type=int, default=0, help="a seeded sample of N cases")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    run = in_subprocess if a.subprocess else in_process
    chosen = cases()
    if a.sample:
        chosen = random.Random(a.seed).sample(chosen, min(a.sample, len(chosen)))
    with tempfile.TemporaryDirectory() as tmp:
        fixture = make_fixture(Path(tmp) / "fixture", lambda v: in_process(v)[0])
        outcomes = []
        for c in chosen:
            o = run_case(c, fixture, Path(tmp) / "box", run)
            outcomes.append(o)
            if not o.clean or o.changed or o.leftover:
                print(f"FAIL {o.case}: rc={o.rc} changed={o.changed[:3]} {o.stderr.strip()[:300]}")
        _make_writable(Path(tmp))
    print(table(outcomes))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())


__all__ = [
    "ROOT",
    "SOURCE_ARGS",
    "TINY",
    "TOY_ARGS",
    "_CKPT_CORRUPTIONS",
    "Case",
    "_bad_shape",
    "_drop_array",
    "_empty",
    "_flip",
    "_truncate",
    "cases",
    "in_process",
    "in_subprocess",
    "make_fixture",
    "run_case",
    "table",
]
