"""Beyond the paper: regime borders per optimizer x sphere, and ELR schedules, on MNIST MLP-SI.

``borders``: ``find-transitions`` for every ``--optimizer`` x ``--sphere``
(``sgdp``/``adamp`` only on ``total``: they are not on a sphere), one search
each, with the same data, epochs and ELR range.  ``--write`` puts the table in
``experiments/OPTIMIZERS.md`` (section ``borders``), with this command.

    .venv/bin/python -m experiments.optimizers borders --out runs/optim --write

``groups``: each layer's ELR under ``sgd`` on the three spheres, read from
the borders' runs (:func:`groups_table`), section ``groups``.

``schedules``: the regime-aware ELR schedule against fixed ELRs and cosine
(:func:`run_schedules`), section ``schedules``:

    .venv/bin/python -m experiments.optimizers schedules --seeds 0 1 2 --epochs 20 --write

(``--border-from runs/optim/borders/sgd-total`` takes the border from a search.)

The settings are flags (defaults: 10,000 MNIST training images, 10 epochs,
3 rounds of 6 ELRs in 1e-5..10, seed 0), so a GPU can redo it at full scale.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "experiments" / "OPTIMIZERS.md"
COMBOS = [
    *((o, s) for o in ("sgd", "riemannian_sgd", "sphere_momentum", "sphere_adam")
      for s in ("total", "layer", "filter")),
    ("sgdp", "total"),
    ("adamp", "total"),
]  # fmt: skip
#: Momentum of the momentum methods (their ELR is the effective one, lr / (1 - beta) / rho**2).
MOMENTUM = 0.9


def data_dir() -> str:
    """MNIST's IDX files: ``$THREE_REGIMES_DATA_DIR/mnist`` or ``../shared/data/mnist``."""
    root = os.environ.get("THREE_REGIMES_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    return str(Path(root) / "mnist")


def base_config(args, optimizer: str = "sgd", sphere: str = "total"):
    """The MNIST MLP-SI config of one optimizer and sphere."""
    from three_regimes_jax.config import Config

    extra = {"momentum": MOMENTUM} if optimizer in ("sphere_momentum", "sgdp") else {}
    return Config.from_flat(
        model="mlp_si",
        dataset="mnist",
        data_dir=args.data_dir,
        use_data_size=args.train_size,
        epochs=args.epochs,
        seeds=tuple(args.seeds),
        optimizer=optimizer,
        sphere=sphere,
        **extra,
    )


def run_borders(args) -> list[dict]:
    """One ``find-transitions`` per optimizer x sphere; returns the table rows."""
    from three_regimes_jax.studies.transitions import run_find_transitions_command

    rows = []
    for opt, sphere in COMBOS:
        out = Path(args.out) / "borders" / f"{opt}-{sphere}"
        t0 = time.perf_counter()
        rep = run_find_transitions_command(
            base_config(args, opt, sphere),
            tuple(args.elr_range),
            args.rounds,
            args.points,
            None,
            out,
            overwrite=True,
            progress=False,
        )
        row = {"optimizer": opt, "sphere": sphere, "wall_s": round(time.perf_counter() - t0, 1)}
        for b in ("1-2", "2-3"):
            row[b] = rep["transitions"][b]
            row[f"{b} reason"] = rep["reasons"][b]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def run_schedules(args) -> tuple[str, dict]:
    """Fixed ELRs, cosine and the regime-aware schedule in one grid; returns the table.

    Every schedule runs from every ELR of ``--elrs`` (the grid is schedules x
    ELRs x seeds, one compiled step).  The regime-aware schedule starts at the
    member's ELR and drops to ``--border / --drop`` (regime 1) at epoch
    ``--switch``; its useful starts are the low regime-2 ELRs just above the
    1/2 border.  Reported per schedule and start: final test error and the top
    Hessian eigenvalue (sharpness at the end), mean +- std over seeds; then the
    regime-aware schedule's best start against the best fixed ELR and the best
    cosine, as the per-seed difference of test errors (mean +- std).
    """
    import numpy as np

    from three_regimes_jax import run_sweep

    after = args.border / args.drop
    schedules = ("constant", "cosine", f"regime:{after:.4g}@{args.switch}")
    cfg = base_config(args).replace(
        elrs=tuple(args.elrs),
        elr_schedules=schedules,
        sharpness_every=args.epochs,
        sharpness_size=args.sharpness_size,
    )
    t0 = time.perf_counter()
    res = run_sweep(cfg, out=Path(args.out) / args.section, overwrite=True, progress=False)
    m = res.metrics
    err = 1.0 - m["test_acc"][:, -1]
    sharp = m["hessian_top_eig"][:, -1]
    rows, per_seed = [], {}
    for sched in schedules:
        for elr in args.elrs:
            pick = (m["elr_schedule"] == sched) & np.isclose(m["elr"], elr)
            per_seed[(sched, elr)] = err[pick]
            rows.append((sched, elr, err[pick], sharp[pick]))
    lines = [
        "| schedule | start ELR | test error (%) | top Hessian eigenvalue |",
        "|---|---|---|---|",
    ]
    for sched, elr, e, h in rows:
        lines.append(
            f"| {sched} | {elr:g} | {100 * e.mean():.2f} +- {100 * e.std():.2f} | "
            f"{h.mean():.3g} +- {h.std():.2g} |"
        )

    def best(kind):
        keys = [k for k in per_seed if k[0].startswith(kind)]
        return min(keys, key=lambda k: per_seed[k].mean())

    ra, fixed, cos = best("regime"), best("constant"), best("cosine")
    summary = {}
    for name, other in (("best fixed ELR", fixed), ("best cosine", cos)):
        d = 100 * (per_seed[ra] - per_seed[other])
        summary[name] = {
            "against": [other[0], float(other[1])],
            "diff_mean": float(d.mean()),
            "diff_std": float(d.std()),
        }
        lines.append("")
        lines.append(
            f"Regime-aware (start {ra[1]:g}) minus {name} ({other[0]}, {other[1]:g}): "
            f"{d.mean():+.2f} +- {d.std():.2f} points of test error over "
            f"{len(d)} seeds (per-seed differences)."
        )
    lines.append("")
    lines.append(f"Wall time: {time.perf_counter() - t0:.0f} s for {len(err)} members.")
    return "\n".join(lines), summary


def groups_table(out: str | Path, elr: float = 2.5e-3) -> str:
    """Each layer's ELR under ``sgd`` on the three spheres, from the borders' first rounds.

    Reads ``out/borders/sgd-<sphere>/round_1`` (no training): the member
    nearest ``elr``, its per-layer ``group_elr`` in the first and the last
    epoch.  On the total sphere the layers' ELRs move as their norms trade
    places (eq. 3 keeps their harmonic sum); on layer spheres each stays at
    ``elr rho0^2 / rho_l^2``; on filter spheres every filter trains at
    ``elr F`` and a layer's ELR is ``elr F / n_l`` for its ``n_l`` filters.
    """
    import numpy as np

    from three_regimes_jax import load_results

    lines = ["| sphere | member ELR | layer | group ELR, epoch 1 | group ELR, last epoch |",
             "|---|---|---|---|---|"]  # fmt: skip
    for sphere in ("total", "layer", "filter"):
        res = load_results(Path(out) / "borders" / f"sgd-{sphere}" / "round_1")
        m = res.metrics
        i = int(np.argmin(np.abs(np.log(m["elr"] / elr))))
        for k, name in enumerate(m["group_names"]):
            ge = m["group_elr"][i, :, k]
            lines.append(f"| {sphere} | {m['elr'][i]:.3g} | {name} | {ge[1]:.3g} | {ge[-1]:.3g} |")
    return "\n".join(lines)


def border_of(directory: str | Path) -> float:
    """The 1/2 border's midpoint in a ``find-transitions`` output directory.

    The regime-aware recipe in one place: search the border, then schedule
    around it (``schedules --border-from DIR``).
    """
    from three_regimes_jax.errors import UserError
    from three_regimes_jax.studies.transitions import TRANSITIONS_FILE

    path = Path(directory) / TRANSITIONS_FILE
    try:
        mid = json.loads(path.read_text())["midpoints"].get("1-2")
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"no find-transitions report in {directory} ({type(e).__name__})") from None
    if mid is None:
        raise UserError(f"{path} has no 1/2 border; widen --elr-range and search again")
    return float(mid)


def _interval(iv) -> str:
    return "not found" if iv is None else f"[{iv[0]:.3g}, {iv[1]:.3g}]"


def borders_table(rows: list[dict]) -> str:
    """The markdown table of :func:`run_borders`."""
    lines = [
        "| optimizer | sphere | 1/2 border | 2/3 border | wall s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['optimizer']} | {r['sphere']} | {_interval(r['1-2'])} | "
            f"{_interval(r['2-3'])} | {r['wall_s']} |"
        )
    return "\n".join(lines)


def write_section(name: str, command: str, body: str) -> None:
    """Replaces (or appends) section ``name`` of :data:`DOC`."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n\nCommand: `{command}`\n\n{body}\n\n{end}"
    text = DOC.read_text() if DOC.exists() else "# Optimizers and schedules on the sphere\n"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)


def main(argv=None) -> int:
    """Runs one study of this module (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m experiments.optimizers", description=__doc__)
    p.add_argument("what", choices=("borders", "groups", "schedules"))
    p.add_argument("--out", default="runs/optim")
    p.add_argument("--data-dir", default=data_dir())
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--elr-range", type=float, nargs=2, default=[1e-5, 10.0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--points", type=int, default=6)
    p.add_argument("--elrs", type=float, nargs="+", default=[2e-3, 5e-3, 1e-2, 2e-2, 5e-2])
    p.add_argument("--border", type=float, default=6.5e-3, help="the 1/2 border (schedules)")
    p.add_argument(
        "--border-from",
        help="schedules: take the 1/2 border from a find-transitions directory (its midpoint)",
    )
    p.add_argument("--drop", type=float, default=2.0, help="regime-1 ELR: border / drop")
    p.add_argument("--switch", type=int, default=10, help="epoch of the regime-aware drop")
    p.add_argument("--sharpness-size", type=int, default=1024)
    p.add_argument("--section", default="schedules", help="schedules: the section to write")
    p.add_argument("--write", action="store_true", help=f"write the table into {DOC.name}")
    p.add_argument(
        "--reuse", action="store_true", help="borders: the table of OUT/borders.json, no training"
    )
    args = p.parse_args(argv)
    command = "python -m experiments.optimizers " + " ".join(argv or sys.argv[1:])
    if args.what == "schedules":
        if args.border_from:
            args.border = border_of(args.border_from)
        table, summary = run_schedules(args)
        print(table)
        (Path(args.out) / f"{args.section}.json").write_text(json.dumps(summary, indent=1))
        if args.write:
            write_section(args.section, command, table)
        return 0
    if args.what == "groups":
        table = groups_table(args.out)
        print(table)
        if args.write:
            write_section("groups", command, table)
        return 0
    saved = Path(args.out) / "borders.json"
    rows = json.loads(saved.read_text()) if args.reuse else run_borders(args)
    table = borders_table(rows)
    print(table)
    saved.write_text(json.dumps(rows, indent=1))
    if args.write:
        write_section("borders", command, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
