"""The ``three-regimes`` command line.

Subcommands: ``sweep`` (train an ELR x seed grid), ``finetune`` (pre-trained
members x new ELRs), ``interpolate`` (linear connectivity between checkpoints),
``toy`` (the toy function of Sec. 3 with its theory), ``regimes`` (label each
member), ``find-transitions`` (adaptive search of the regime borders),
``plot`` (figures), ``experiment`` (the paper's figures from a catalog).  Bad input prints one line
``three-regimes: error: ...`` on stderr and exits with code 2, writing nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from three_regimes_jax.errors import UserError

PROG = "three-regimes"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{message} (see `{self.prog} --help`)")


def _split(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not any(items):
        return []
    if not all(items):
        raise UserError(f"{what} has an empty item in {text!r}; use e.g. 1e-3,1e-2")
    return items


def parse_floats(text: str, what: str) -> list[float]:
    """Parses ``"1e-3,2e-3"`` into floats (``""`` gives ``[]``); errors name ``what``."""
    try:
        return [float(t) for t in _split(text, what)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated numbers, got {text!r}") from None


def parse_ints(text: str, what: str) -> list[int]:
    """Parses ``"0,1,2"`` into ints; raises UserError naming ``what``."""
    try:
        return [int(t) for t in _split(text, what)]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_elrs(text: str) -> list[float]:
    """Parses ``--elrs``: non-empty, each finite and > 0."""
    elrs = parse_floats(text, "--elrs")
    if not elrs:
        raise UserError("--elrs is empty: give at least one ELR, e.g. --elrs 1e-3,1e-2")
    bad = [e for e in elrs if not (math.isfinite(e) and e > 0)]
    if bad:
        raise UserError(f"every ELR must be a finite number > 0, got {bad[0]} in --elrs")
    return elrs


def _add_model_args(p, *, sweep: bool) -> None:
    """Flags shared by ``sweep`` and ``find-transitions``: model, data, training."""
    from three_regimes_jax.data import DATASETS
    from three_regimes_jax.grid import STRATEGIES
    from three_regimes_jax.models import MODELS

    p.add_argument("--model", default="mlp_si", help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--dataset", default="digits", help=f"one of: {', '.join(DATASETS)}")
    p.add_argument("--data-dir", help="folder with the original files (or THREE_REGIMES_DATA_DIR)")
    if sweep:
        p.add_argument("--elrs", required=True, help="comma-separated ELRs, e.g. 1e-4,1e-3,1e-2")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=32, help="ConvNetSI width k (default 32)")
    p.add_argument("--depth", type=int, default=3, help="ConvNetSI depth (default 3)")
    p.add_argument("--hidden", default="300,100", help="MLP-SI hidden widths (default 300,100)")
    p.add_argument("--init-scale", type=float, default=10.0, help="norm of the frozen last layer")
    p.add_argument("--use-data-size", type=int, help="train on the first N examples only")
    p.add_argument("--label-noise", type=float, default=0.0, help="fraction of noisy labels")
    p.add_argument("--noise-seed", type=int, default=0)
    p.add_argument("--strategy", default="auto", help=f"one of: {', '.join(STRATEGIES)}")
    p.add_argument("--drop-last", action="store_true", help="drop the last partial batch")


def _config_from_args(args, elrs: tuple[float, ...], **extra):
    """The :class:`SweepConfig` of the shared flags (see :func:`_add_model_args`)."""
    from three_regimes_jax.sweep import SweepConfig

    if args.use_data_size is not None and args.use_data_size < 1:
        raise UserError(f"--use-data-size must be >= 1, got {args.use_data_size}")
    return SweepConfig(
        model=args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        elrs=elrs,
        seeds=tuple(parse_ints(args.seeds, "--seeds")),
        epochs=args.epochs,
        batch_size=args.batch_size,
        width=args.width,
        depth=args.depth,
        hidden=tuple(parse_ints(args.hidden, "--hidden")),
        init_scale=args.init_scale,
        use_data_size=args.use_data_size,
        label_noise=args.label_noise,
        noise_seed=args.noise_seed,
        strategy=args.strategy,
        drop_last=args.drop_last,
        **extra,
    )


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train an ELR x seed grid of SI models on the sphere",
        description="Train every (ELR, seed) member in one compiled step per epoch and "
        "write DIR/config.json, DIR/metrics.npz and DIR/summary.json.",
    )
    _add_model_args(p, sweep=True)
    p.add_argument(
        "--random-walk",
        action="store_true",
        help="random-walk baseline (App. M): random tangent steps of the gradient's length",
    )
    g = p.add_argument_group("sharpness (App. B)")
    g.add_argument("--sharpness-every", type=int, default=0, help="every K epochs (0: off)")
    g.add_argument("--sharpness-size", type=int, default=2048, help="training subset size")
    g.add_argument("--sharpness-probes", type=int, default=8, help="Hutchinson probes")
    g.add_argument("--sharpness-iters", type=int, default=20, help="Lanczos iterations")
    g = p.add_argument_group("checkpoints (Orbax, in DIR/checkpoints)")
    g.add_argument("--checkpoint-epochs", default="", help="comma-separated epochs, e.g. 0,1,5")
    g.add_argument("--checkpoint-every", type=int, default=0, help="every N epochs")
    g.add_argument("--checkpoint-log", action="store_true", help="the paper's log-spaced schedule")
    g.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _add_output(p)
    p.set_defaults(func=_cmd_sweep)


def _add_output(p) -> None:
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def _cmd_sweep(args) -> int:
    from three_regimes_jax.sweep import run_sweep

    config = _config_from_args(
        args,
        tuple(parse_elrs(args.elrs)),
        random_walk=args.random_walk,
        sharpness_every=args.sharpness_every,
        sharpness_size=args.sharpness_size,
        sharpness_probes=args.sharpness_probes,
        sharpness_iters=args.sharpness_iters,
        checkpoint_epochs=tuple(parse_ints(args.checkpoint_epochs, "--checkpoint-epochs")),
        checkpoint_every=args.checkpoint_every,
        checkpoint_log=args.checkpoint_log,
    )
    res = run_sweep(
        config,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.quiet,
    )
    _report(res, args)
    return 0


def _report(res, args) -> None:
    if args.quiet:
        return
    s = res.summary
    print(res.table())
    print(
        f"{len(s['members'])} members, {s['epochs']} epochs in {s['wall_time_s']:.1f} s "
        f"({s['strategy']} on {s['backend']}); results in {args.out}"
    )


def _add_toy(sub) -> None:
    p = sub.add_parser(
        "toy",
        help="the toy function of Sec. 3 vs its closed-form theory",
        description="Projected GD on F = sum_i a_i x_i^2/(x_i^2+y_i^2) on the unit sphere at "
        "fixed ELRs; writes DIR/toy.npz, DIR/summary.json and two figures.",
    )
    p.add_argument("--alphas", required=True, help="comma-separated alpha_i > 0, e.g. 1,2,4")
    p.add_argument("--elrs", required=True, help="comma-separated ELRs, e.g. 0.1,0.2,0.5")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--starts", type=int, default=1, help="random starting points per ELR")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_toy)


def _cmd_toy(args) -> int:
    import json

    from three_regimes_jax.toy_report import run_toy_command

    alphas = parse_floats(args.alphas, "--alphas")
    elrs = parse_floats(args.elrs, "--elrs")
    summary = run_toy_command(alphas, elrs, args.steps, args.seed, args.starts, args.out)
    print(json.dumps(summary, indent=2))
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune pre-trained members at new ELRs (a grid of grids)",
        description="Take the members of a checkpointed sweep at --epoch and train each at "
        "every new ELR in one grid; epochs continue from --epoch.",
    )
    p.add_argument("--from", dest="source", required=True, help="the sweep's results directory")
    p.add_argument("--epoch", type=int, help="source checkpoint epoch (default: the latest)")
    p.add_argument("--from-init", action="store_true", help="start from epoch 0 (baselines)")
    p.add_argument("--members", default="", help="source ELRs to fine-tune (default: all)")
    p.add_argument("--elrs", required=True, help="new ELRs, comma-separated")
    p.add_argument("--epochs", type=int, required=True, help="fine-tuning epochs")
    p.add_argument(
        "--data-key",
        default="continue",
        help="batch order: continue (the source's, default) or new",
    )
    p.add_argument("--sharpness-every", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    _add_output(p)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args) -> int:
    from three_regimes_jax.checkpoint import latest_epoch
    from three_regimes_jax.finetune import FinetuneConfig, run_finetune

    if args.from_init and args.epoch not in (None, 0):
        raise UserError("--from-init starts at epoch 0; drop --epoch or --from-init")
    epoch = 0 if args.from_init else args.epoch
    if epoch is None:
        epoch = latest_epoch(args.source)
        if epoch is None:
            raise UserError(f"--from {args.source} has no checkpoints; pass a checkpointed sweep")
    config = FinetuneConfig(
        source=args.source,
        epoch=epoch,
        elrs=tuple(parse_elrs(args.elrs)),
        epochs=args.epochs,
        members=tuple(parse_floats(args.members, "--members")),
        data_key=args.data_key,
        sharpness_every=args.sharpness_every,
        checkpoint_every=args.checkpoint_every,
    )
    res = run_finetune(config, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    _report(res, args)
    return 0


def _add_interpolate(sub) -> None:
    p = sub.add_parser(
        "interpolate",
        help="loss and accuracy along straight lines between checkpointed solutions",
        description="Endpoints are DIR[:EPOCH][@ELR] (default: the latest epoch, all members).",
    )
    p.add_argument("--a", required=True, help="first endpoint(s): DIR[:EPOCH][@ELR]")
    p.add_argument("--b", help="second endpoint(s) (default: the same as --a)")
    p.add_argument("--pairs", default="neighbors", help="neighbors (default) or all")
    p.add_argument("--points", type=int, default=21)
    p.add_argument("--recompute-bn", action="store_true", help="re-estimate BN stats per point")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_interpolate)


def _cmd_interpolate(args) -> int:
    from three_regimes_jax.connectivity import run_interpolate

    res = run_interpolate(
        args.a,
        args.b or args.a,
        args.out,
        pairs=args.pairs,
        points=args.points,
        recompute_bn=args.recompute_bn,
    )
    if not args.quiet:
        print(f"{'A':>24} {'B':>24} {'barrier':>10} {'loss(0)':>9} {'loss(1)':>9}")
        for k in range(len(res["barrier"])):
            a = f"e{res['a_epoch'][k]} elr {res['a_elr'][k]:g}"
            b = f"e{res['b_epoch'][k]} elr {res['b_elr'][k]:g}"
            loss = res["train_loss"][k]
            print(f"{a:>24} {b:>24} {res['barrier'][k]:>10.4g} {loss[0]:>9.4g} {loss[-1]:>9.4g}")
        print(f"written to {args.out}")
    return 0


def _add_regimes(sub) -> None:
    p = sub.add_parser(
        "regimes",
        help="label each member regime 1, 2 or 3 and estimate the transition ELRs",
        description="Classify every member of a results directory; print a table and write "
        "DIR/regimes.json.",
    )
    p.add_argument("dir", help="results directory of a sweep or fine-tune")
    p.add_argument("--random-walk", help="results of the same grid run with --random-walk")
    p.add_argument("--quiet", action="store_true", help="write regimes.json only")
    p.set_defaults(func=_cmd_regimes)


def _cmd_regimes(args) -> int:
    from three_regimes_jax.regimes import run_regimes_command

    _, table = run_regimes_command(args.dir, random_walk=args.random_walk)
    if not args.quiet:
        print(table)
    return 0


def _add_find_transitions(sub) -> None:
    p = sub.add_parser(
        "find-transitions",
        help="locate the regime 1/2 and 2/3 borders by adaptive ELR refinement",
        description="Each round trains one vmapped grid of --points log-spaced ELRs; the next "
        "round zooms into the brackets where the regime label changes.",
    )
    _add_model_args(p, sweep=False)
    p.add_argument("--elr-range", required=True, help="LO,HI, e.g. 1e-6,10")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--points", type=int, default=8, help="ELRs per round")
    _add_output(p)
    p.set_defaults(func=_cmd_find_transitions)


def _cmd_find_transitions(args) -> int:
    from three_regimes_jax.transitions import (
        format_transitions,
        parse_elr_range,
        run_find_transitions_command,
    )

    elr_range = parse_elr_range(args.elr_range)
    base = _config_from_args(args, (elr_range[0],))
    report = run_find_transitions_command(
        base,
        elr_range,
        args.rounds,
        args.points,
        args.epochs,
        args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(format_transitions(report))
    return 0


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="the paper's figures from results directories",
        description="Render figures (PNG and PDF) from results directories, interpolate "
        ".npz files or toy directories; several inputs are overlaid.",
    )
    p.add_argument("paths", nargs="+", help="results dirs, interpolate .npz files, toy dirs")
    p.add_argument(
        "--kind",
        default="all",
        help="overview, diagram, scatter, groups, lc, randomwalk, toy or all (default)",
    )
    p.add_argument("--out", help="figure directory (default: DIR/figures of the first input)")
    p.add_argument("--member", help="member for --kind groups: ELR or ELR:SEED, e.g. 1e-3:0")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from plotting import run_plot

    files = run_plot(args.paths, kind=args.kind, out=args.out, member=args.member)
    if not args.quiet:
        for f in files:
            print(f)
    return 0


def _add_experiment(sub) -> None:
    p = sub.add_parser(
        "experiment",
        help="run a paper figure's experiment (experiments/README.md)",
        description="Run the steps of a figure's config: the quick variant (minutes on a "
        "CPU, real data) or the paper variant (the paper's model, data, ELRs and epochs).",
    )
    p.add_argument("name", nargs="?", help="e.g. fig1 (see --list)")
    p.add_argument("--variant", default="quick", help="quick (default) or paper")
    p.add_argument("--out", help="output directory (default runs/<name>-<variant>)")
    p.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    p.add_argument("--list", action="store_true", help="list the experiments")
    p.set_defaults(func=_cmd_experiment)


def _cmd_experiment(args) -> int:
    from experiments.runner import format_step, list_experiments, run_experiment

    if args.list:
        for row in list_experiments():
            t = row["quick_time_s"]
            when = f"{t:.0f} s" if isinstance(t, int | float) else "-"
            print(f"{row['name']:>6} {row['status']:>8} {when:>7}  {row['title']}")
        return 0
    if not args.name:
        raise UserError("give an experiment name (e.g. fig1) or --list")
    steps = run_experiment(args.name, args.variant, args.out, dry_run=args.dry_run)
    if args.dry_run:
        for argv in steps:
            print(format_step(argv))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = _Parser(prog=PROG, description="Scale-invariant networks on the sphere.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_sweep(sub)
    _add_finetune(sub)
    _add_interpolate(sub)
    _add_toy(sub)
    _add_regimes(sub)
    _add_find_transitions(sub)
    _add_plot(sub)
    _add_experiment(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
