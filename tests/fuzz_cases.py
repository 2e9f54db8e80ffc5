"""The fuzz set's cases: one valid command with exactly one thing made wrong.

See :mod:`fuzz` (the runner and the pass criteria).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "digits", "--use-data-size", "128", "--hidden", "8", "--batch-size", "64"]
SOURCE_ARGS = ["sweep", *TINY, "--elrs", "1e-3,1e-1", "--epochs", "2", "--checkpoint-every", "1"]
TOY_ARGS = ["toy", "--alphas", "1,2", "--elrs", "0.1,0.5", "--steps", "20"]


@dataclass
class Case:
    """One bad input: ``argv`` (with ``{SRC}``, ``{OUT}``, ``{TOY}``, ``{FILE}``,
    ``{RO}``, ``{FOREIGN}`` placeholders) and an optional damage to the sandbox."""

    name: str
    argv: list[str]
    damage: Callable[[Path], None] | None = None
    out: str | None = "{OUT}"  # the path the command may write (checked for leftovers)
    tags: set[str] = field(default_factory=set)


# --------------------------------------------------------------------------- damage


def _flip(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(mid + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _largest_file(d: Path) -> Path:
    return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _on(rel: str, how: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(box: Path) -> None:
        target = box / rel.format(SRC="src")
        how(_largest_file(target) if target.is_dir() else target)

    return damage


def _json(rel: str, text: str) -> Callable[[Path], None]:
    def damage(box: Path) -> None:
        (box / rel).write_text(text)

    return damage


def _drop_array(name: str) -> Callable[[Path], None]:
    """Rewrites ``src/metrics.npz`` without ``name``, re-signed: only validation can tell."""

    def damage(box: Path) -> None:
        import numpy as np

        from three_regimes_jax.storage.files import write_npz
        from three_regimes_jax.storage.integrity import write_manifest

        path = box / "src" / "metrics.npz"
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k != name}
        write_npz(path, arrays)
        write_manifest(box / "src", ["metrics.npz", "summary.json"])

    return damage


def _bad_shape(box: Path) -> None:
    import numpy as np

    from three_regimes_jax.storage.files import write_npz
    from three_regimes_jax.storage.integrity import write_manifest

    path = box / "src" / "metrics.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["train_loss"] = arrays["train_loss"][:, :1]
    write_npz(path, arrays)
    write_manifest(box / "src", ["metrics.npz", "summary.json"])


def _rm(rel: str) -> Callable[[Path], None]:
    def damage(box: Path) -> None:
        p = box / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return damage


# --------------------------------------------------------------------------- the cases

_CORRUPTIONS = {
    "metrics-truncated": _on("src/metrics.npz", _truncate),
    "metrics-flipped": _on("src/metrics.npz", _flip),
    "metrics-empty": _on("src/metrics.npz", _empty),
    "summary-truncated": _on("src/summary.json", _truncate),
    "summary-list": _json("src/summary.json", "[]"),
    "config-list": _json("src/config.json", "[]"),
    "config-empty": _json("src/config.json", ""),
    "config-garbled": _json("src/config.json", '{"kind": "sweep", "train": {"epochs": "x"}}'),
    "manifest-garbled": _json("src/MANIFEST.sha256", "not a manifest\n"),
    "metrics-no-array": _drop_array("train_loss"),
    "metrics-no-eff-grad-norm": _drop_array("eff_grad_norm"),
    "metrics-bad-shape": _bad_shape,
    "metrics-missing": _rm("src/metrics.npz"),
}
_CKPT_CORRUPTIONS = {
    "ckpt-data-flipped": _on("src/checkpoints/2/state", _flip),
    "ckpt-data-truncated": _on("src/checkpoints/2/state", _truncate),
    "ckpt-data-empty": _on("src/checkpoints/2/state", _empty),
    "ckpt-meta-garbled": _json("src/checkpoints/2/meta/metadata", "[]"),
    "ckpt-manifest-missing": _rm("src/checkpoints/2/MANIFEST.sha256"),
    "ckpt-state-missing": _rm("src/checkpoints/2/state"),
}
_OUTS = {  # bad --out values for directory outputs
    "out-empty": "",
    "out-blank": "   ",
    "out-file": "{FILE}",
    "out-under-file": "{FILE}/sub",
    "out-readonly": "{RO}/sub",
    "out-foreign": "{FOREIGN}",
    "out-toy": "{TOY}",
}


def _flag_cases(cmd: str, base: list[str], bad: dict[str, list[str]]) -> list[Case]:
    out = []
    for flag, values in bad.items():
        for v in values:
            argv = [a for a in base]
            if flag in argv:
                argv[argv.index(flag) + 1] = v
            else:
                argv += [flag, v]
            out.append(Case(f"{cmd} {flag} {v!r}", argv))
    return out


def cases() -> list[Case]:
    """The whole fuzz set (without read-only cases when running as root, who writes anyway)."""
    cs = _all_cases()
    if os.geteuid() == 0:
        cs = [c for c in cs if not any("{RO}" in a for a in c.argv)]
    return cs


def _all_cases() -> list[Case]:
    sweep = [
        *SOURCE_ARGS[:1],
        *TINY,
        "--elrs",
        "1e-3",
        "--epochs",
        "1",
        "--quiet",
        "--out",
        "{OUT}",
    ]
    cs: list[Case] = []
    cs += _flag_cases(
        "sweep",
        sweep,
        {
            "--elrs": ["", ",", "0", "-1", "nan", "inf", "1e-50", "1e39", "1e-3,1e-3", "abc"],
            "--seeds": ["-1", "1.5", "9" * 25, "0,0", "abc"],
            "--epochs": ["0", "-1", "1.5", "abc", "9" * 25],
            "--batch-size": ["0", "-5", "abc", "1e3"],
            "--hidden": ["", "0", "-3", "8,,8", "abc"],
            "--init-scale": ["nan", "0", "-10", "inf", "abc"],
            "--use-data-size": ["0", "-1", "abc"],
            "--label-noise": ["-0.1", "1.5", "nan"],
            "--noise-seed": ["-1", "abc", "9" * 25],
            "--dataset": ["nope", ""],
            "--model": ["nope"],
            "--width": ["0", "-1"],
            "--depth": ["0", "-2"],
            "--strategy": ["bogus"],
            "--precision": ["bogus"],
            "--grid": ["bogus"],
            "--checkpoint-every": ["-1", "abc"],
            "--checkpoint-epochs": ["-1", "abc", "1,1"],
            "--sharpness-every": ["-1"],
            "--sharpness-probes": ["0"],
            "--sharpness-iters": ["0"],
            "--filter-log-elrs": ["5", "1e-3,1e-3"],
            "--random-walk-from": ["{MISSING}", "{FILE}"],
            "--out": list(_OUTS.values()),
            "--use-test-size": ["0", "abc", "100000"],
            "--train": ["bogus"],
            "--lrs": ["0.1"],
            "--weight-decays": ["0"],
            "--momentum": ["0.9"],
            "--schedule": ["cosine", "bogus"],
            "--noninv-lr": ["0"],
            "--split-test": ["0.5"],
            "--vocab-size": ["1"],
            "--max-len": ["0"],
            "--d-model": ["0"],
            "--heads": ["0"],
            "--dropout": ["1", "-0.1"],
            "--positional": ["bogus"],
            "--pooling": ["bogus"],
        },
    )
    whole = [a for a in sweep if a not in ("--elrs", "1e-3")] + ["--train", "whole"]
    whole += ["--lrs", "0.1"]
    cs += _flag_cases(
        "sweep --train whole",
        whole,
        {
            "--lrs": ["", "0", "nan", "-1", "0.1,0.1"],
            "--weight-decays": ["-1", "nan", "", "0,0"],
            "--momentum": ["1", "-0.1", "nan"],
            "--noninv-lr": ["-0.5", "-2", "nan"],
            "--elrs": ["1e-3"],
        },
    )
    cs += [
        Case("sweep --train whole without --lrs", whole[:-2]),
        Case("sweep --train whole --random-walk", [*whole, "--random-walk"]),
        Case("sweep --train whole --grid zip", [*whole, "--grid", "zip"]),
        Case("sweep --augment on digits", [*whole, "--augment"]),
        Case("sweep transformer on digits", [*whole, "--model", "transformer"]),
        Case("sweep ag_news with mlp_si", [*whole, "--dataset", "ag_news"]),
        Case(
            "sweep --heads not dividing",
            [*whole, "--model", "transformer", "--dataset", "ag_news", "--heads", "3"],
        ),
        Case("sweep without --elrs", [a for a in sweep if a not in ("--elrs", "1e-3")]),
    ]
    cs += [
        Case("sweep --out other run", [*sweep[:-1], "{SRC}"], out="{SRC}"),
        Case("sweep --resume nothing", [*sweep, "--resume"]),
        Case("sweep --resume --overwrite", [*sweep, "--resume", "--overwrite"]),
        Case("sweep --drop-last batch>data", [*sweep, "--drop-last", "--batch-size", "4096"]),
        Case("sweep --grid zip mismatch", [*sweep, "--grid", "zip", "--seeds", "0,1"]),
        Case("sweep --data-dir a file", [*sweep, "--dataset", "mnist", "--data-dir", "{FILE}"]),
        Case("sweep mnist missing dir", [*sweep, "--dataset", "mnist", "--data-dir", "{MISSING}"]),
        Case(
            "sweep cifar missing dir", [*sweep, "--dataset", "cifar10", "--data-dir", "{MISSING}"]
        ),
        Case(
            "sweep --random-walk-from a longer run needed",
            [*sweep, "--random-walk", "--random-walk-from", "{SRC}", "--epochs", "3"],
        ),
        Case(
            "sweep --random-walk-from another model",
            [*sweep, "--random-walk", "--random-walk-from", "{SRC}", "--hidden", "9"],
        ),
        Case("sweep unknown flag", [*sweep, "--bogus"]),
    ]
    ft = ["finetune", "--from", "{SRC}", "--elrs", "1e-3", "--epochs", "1", "--quiet"]
    ft += ["--out", "{OUT}"]
    cs += _flag_cases(
        "finetune",
        ft,
        {
            "--from": ["{MISSING}", "{FILE}", "{FOREIGN}", ""],
            "--epoch": ["99", "-1", "abc"],
            "--members": ["5", "abc", "1e-3,1e-3"],
            "--elrs": ["1e-3,1e-3", "0", "1e-50"],
            "--epochs": ["0"],
            "--data-key": ["bogus"],
            "--out": [*_OUTS.values(), "{SRC}", "{SRC}/sub"],
        },
    )
    cs += [Case("finetune --out source --overwrite", [*ft[:-1], "{SRC}", "--overwrite"], out=None)]
    cs += [
        Case(f"finetune --from {k}", ft, damage=d, tags={"corrupt"})
        for k, d in _CKPT_CORRUPTIONS.items()
    ]
    ip = ["interpolate", "--a", "{SRC}", "--points", "3", "--quiet", "--out", "{OUT}.npz"]
    for c in _flag_cases(
        "interpolate",
        ip,
        {
            "--a": ["{MISSING}", "{SRC}:99", "{SRC}@5", "{SRC}:abc", "{FILE}"],
            "--points": ["1", "0", "abc", "9" * 25],
            "--pairs": ["bogus"],
            "--out": ["", "{OUT}.txt", "{SRC}", "{SRC}/metrics.npz", "{FILE}/x.npz", "{RO}/x.npz"],
        },
    ):
        c.out = "{OUT}.npz"
        cs.append(c)
    cs += [
        Case(f"interpolate {k}", ip, damage=d, out="{OUT}.npz", tags={"corrupt"})
        for k, d in _CKPT_CORRUPTIONS.items()
    ]
    toy = [*TOY_ARGS, "--out", "{OUT}"]
    cs += _flag_cases(
        "toy",
        toy,
        {
            "--alphas": ["", "0", "-1", "nan", "1e308", "abc", "1,,2"],
            "--elrs": ["0", "1e-50", "0.1,0.1", "inf"],
            "--steps": ["0", "-1", "abc", "9" * 25],
            "--seed": ["-1", str(2**33)],
            "--starts": ["0"],
            "--out": [*list(_OUTS.values())[:-1], "{SRC}"],
        },
    )
    reg = ["regimes", "{SRC}", "--quiet"]
    cs += [
        Case(f"regimes {k}", reg, damage=d, out=None, tags={"corrupt"})
        for k, d in _CORRUPTIONS.items()
    ]
    cs += [
        Case("regimes missing dir", ["regimes", "{MISSING}"], out=None),
        Case("regimes a file", ["regimes", "{FILE}"], out=None),
        Case("regimes read-only dir", ["regimes", "{RO}/src"], out=None, tags={"ro-src"}),
        Case("regimes --random-walk non-walk", [*reg, "--random-walk", "{SRC}"], out=None),
        Case("regimes --random-walk missing", [*reg, "--random-walk", "{MISSING}"], out=None),
    ]
    plot = ["plot", "{SRC}", "--kind", "overview", "--quiet", "--out", "{OUT}"]
    cs += [Case(f"plot {k}", plot, damage=d, tags={"corrupt"}) for k, d in _CORRUPTIONS.items()]
    cs += _flag_cases(
        "plot",
        plot,
        {"--kind": ["bogus"], "--member": ["bogus", "5:9"], "--out": ["{FILE}", "{RO}/x"]},
    )
    cs += [Case("plot missing input", ["plot", "{MISSING}", "--out", "{OUT}"])]
    ftr = ["find-transitions", *TINY, "--epochs", "1", "--elr-range", "1e-3,1e-1"]
    ftr += ["--rounds", "1", "--points", "2", "--quiet", "--out", "{OUT}"]
    cs += _flag_cases(
        "find-transitions",
        ftr,
        {
            "--elr-range": ["1e-300,1e300", "1,0.1", "abc", "1", "0,1", "1e-50,1"],
            "--rounds": ["0", "-1"],
            "--points": ["1", "abc"],
            "--out": ["", "{FILE}", "{SRC}"],
        },
    )
    cs += [
        Case("experiment --out file", ["experiment", "fig1", "--out", "{FILE}"], out=None),
        Case("experiment unknown", ["experiment", "nope"], out=None),
        Case("experiment bad variant", ["experiment", "fig1", "--variant", "bogus"], out=None),
        Case("experiment no name", ["experiment"], out=None),
        Case("no subcommand", [], out=None),
        Case("unknown subcommand", ["bogus"], out=None),
    ]
    return cs
