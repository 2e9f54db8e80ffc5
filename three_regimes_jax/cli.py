"""The ``three-regimes`` command line.

Subcommands: ``sweep`` (train an ELR x seed grid), ``finetune`` (pre-trained
members x new ELRs), ``interpolate`` (linear connectivity between checkpoints),
``toy`` (the toy function of Sec. 3 with its theory), ``regimes`` (label each
member), ``find-transitions`` (adaptive search of the regime borders),
``plot`` (figures), ``experiment`` (the paper's figures from a catalog), ``merge``
(join the shards of ``sweep --shard K/N``), ``plan`` (what a sweep costs).  Bad input
prints one line ``three-regimes: error: ...`` on stderr and exits with code 2, writing
nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from three_regimes_jax.cli_flags import (  # re-exported: the flag helpers
    COMMAND_FLAGS as COMMAND_FLAGS,
)
from three_regimes_jax.cli_flags import WHOLE_FLAGS, add_config_flags, config_from_args
from three_regimes_jax.cli_flags import parse_elrs as parse_elrs
from three_regimes_jax.cli_flags import parse_floats as parse_floats
from three_regimes_jax.cli_flags import parse_ints as parse_ints
from three_regimes_jax.errors import UserError

PROG = "three-regimes"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str):  # noqa: D102
        raise UserError(f"{message} (see `{self.prog} --help`)")


SWEEP_SECTIONS = ("model", "data", "train", "measure", "checkpoint", "run")


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="train an ELR x seed grid on the sphere (or LR x weight decay x seed, --train whole)",
        description="Train every (ELR, seed) member (with --train whole: every (LR, weight "
        "decay, seed) member) in one compiled step per epoch and write DIR/config.json, "
        "DIR/metrics.npz and DIR/summary.json.",
    )
    add_config_flags(p, SWEEP_SECTIONS, required=("--epochs",))
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    d = p.add_argument_group("many processes (JAX's multi-controller runtime)")
    d.add_argument("--distributed", action="store_true", help="one grid over all processes")
    d.add_argument("--coordinator", help="host:port of process 0 (not on SLURM/MPI/TPU)")
    d.add_argument("--num-processes", type=int, help="number of processes")
    d.add_argument("--process-id", type=int, help="this process's id, from 0")
    _add_output(p)
    p.set_defaults(func=_cmd_sweep)


def _add_output(p) -> None:
    p.add_argument("--out", required=True, help="results directory")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def _cmd_sweep(args) -> int:
    from three_regimes_jax.studies.sweep import run_sweep

    if getattr(args, "train_mode", "sphere") == "sphere" and not hasattr(args, "elrs"):
        raise UserError("sweep needs --elrs on the sphere (or --train whole with --lrs)")
    config = config_from_args(args)
    if args.distributed:
        from three_regimes_jax.studies.distributed import sweep_distributed

        d = (args.coordinator, args.num_processes, args.process_id)  # a failure: os._exit
        res, rank = sweep_distributed(config, args.out, d, overwrite=args.overwrite,
                                      resume=args.resume, progress=not args.quiet)  # fmt: skip
        if rank == 0:
            _report(res, args)
        return 0
    if args.coordinator or args.num_processes is not None or args.process_id is not None:
        raise UserError("--coordinator, --num-processes and --process-id need --distributed")
    res = run_sweep(
        config, out=args.out, overwrite=args.overwrite, resume=args.resume, progress=not args.quiet
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
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace another output in --out")
    p.set_defaults(func=_cmd_toy)


def _cmd_toy(args) -> int:
    import json

    from three_regimes_jax.storage.outdir import claim
    from three_regimes_jax.studies.toy import validate_run_args
    from three_regimes_jax.studies.toy_report import run_toy_command

    alphas = parse_floats(args.alphas, "--alphas")
    elrs = parse_floats(args.elrs, "--elrs")
    a, e, steps, seed, starts = validate_run_args(alphas, elrs, args.steps, args.seed, args.starts)
    run = {"alphas": a.tolist(), "elrs": e.tolist(), "steps": steps, "seed": seed, "starts": starts}
    with claim(args.out, command="toy", config=run, overwrite=args.overwrite) as out:
        summary = run_toy_command(alphas, elrs, steps, seed, starts, out)
        from plotting.toy import write_toy_figures

        write_toy_figures(out)
    print(json.dumps(summary, indent=2))
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune pre-trained members at new ELRs (a grid of grids)",
        description="Take the members of a checkpointed sweep at --epoch and train each at "
        "every new ELR in one grid; epochs continue from --epoch.",
    )
    from three_regimes_jax.config import FINETUNE_OVERRIDES

    add_config_flags(p, ("finetune",), required=("--from",))
    p.add_argument("--from-init", action="store_true", help="start from epoch 0 (baselines)")
    add_config_flags(
        p,
        ("train", "measure", "checkpoint"),
        include=FINETUNE_OVERRIDES,
        required=("--elrs", "--epochs"),
    )
    _add_output(p)
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args) -> int:
    from three_regimes_jax.config import flat_names
    from three_regimes_jax.studies.finetune import finetune_config, run_finetune

    given = {k: v for k, v in vars(args).items() if k in flat_names()}
    source, epoch = given.pop("source"), given.pop("epoch", None)
    if args.from_init and epoch not in (None, 0):
        raise UserError("--from-init starts at epoch 0; drop --epoch or --from-init")
    config = finetune_config(source, epoch=0 if args.from_init else epoch, **given)
    res = run_finetune(config, out=args.out, overwrite=args.overwrite, progress=not args.quiet)
    _report(res, args)
    return 0


def _add_interpolate(sub) -> None:
    p = sub.add_parser(
        "interpolate",
        help="loss and accuracy along straight lines between checkpointed solutions",
        description="Endpoints are DIR[:EPOCH][@ELR] (default: the latest epoch, all members); "
        "DIR is a run, or DIR1,DIR2,... the shards of one.",
    )
    p.add_argument("--a", required=True, help="first endpoint(s): DIR[:EPOCH][@ELR]")
    p.add_argument("--b", help="second endpoint(s) (default: the same as --a)")
    p.add_argument("--pairs", default="neighbors", help="neighbors (default) or all")
    p.add_argument("--points", type=int, default=21)
    p.add_argument("--recompute-bn", action="store_true", help="re-estimate BN stats per point")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier interpolate file at --out"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_interpolate)


def _cmd_interpolate(args) -> int:
    from three_regimes_jax.studies.connectivity import run_interpolate

    res = run_interpolate(
        args.a,
        args.b or args.a,
        args.out,
        pairs=args.pairs,
        points=args.points,
        recompute_bn=args.recompute_bn,
        overwrite=args.overwrite,
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


def _add_merge(sub) -> None:
    p = sub.add_parser(
        "merge",
        help="join the results directories of sweep --shard K/N into the unsharded run's",
        description="Check that the directories are the N shards of one run (one config but "
        "for --shard, each shard once) and write the unsharded run's config.json, "
        "metrics.npz, summary.json and checkpoints to --out.",
    )
    p.add_argument("dirs", nargs="+", help="the shards' results directories, in any order")
    _add_output(p)
    p.set_defaults(func=_cmd_merge)


def _cmd_merge(args) -> int:
    from three_regimes_jax.studies.merge import merge_shards

    res = merge_shards(args.dirs, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(f"merged {len(args.dirs)} shards ({len(res.metrics['elr'])} members) into {args.out}")
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="what a sweep costs: members, memory, chunks, shards, wall time (trains nothing)",
        description="Plan a sweep (its flags) or an experiment's sweeps (--experiment) without "
        "loading data or training: members, member-steps, memory per member and per device, "
        "chunks, --shard values for --gpus, and the wall time from --step-ms, a short timed "
        "run here (--time-steps) or an assumed throughput (--tflops).",
    )
    add_config_flags(p, SWEEP_SECTIONS, exclude=("--shard",))
    p.add_argument("--experiment", help="plan this experiment's sweeps (e.g. fig1) instead")
    p.add_argument("--variant", default="paper", help="the experiment's variant (default paper)")
    p.add_argument("--gpus", type=int, default=8, help="devices to shard over (default 8)")
    p.add_argument("--step-ms", type=float, help="ms per member-step (e.g. from benchmarks)")
    p.add_argument("--time-steps", type=int, default=0, help="time this many steps here")
    p.add_argument("--tflops", type=float, help="assumed TFLOP/s applied to XLA's FLOP count")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args) -> int:
    from three_regimes_jax.studies.plan import plan_sweep

    if args.gpus < 1 or args.time_steps < 0 or (args.step_ms or 1) <= 0 or (args.tflops or 1) <= 0:
        raise UserError("--gpus, --step-ms and --tflops must be positive, --time-steps >= 0")
    configs = [config_from_args(args)]
    if args.experiment:
        from experiments.runner import sweep_configs

        configs = sweep_configs(args.experiment, args.variant)
    for i, config in enumerate(configs):
        plan = plan_sweep(
            config, gpus=args.gpus, step_ms=args.step_ms, time_steps=args.time_steps,
            tflops=args.tflops,
        )  # fmt: skip
        print(("\n" if i else "") + plan.text())
    return 0


def _add_regimes(sub) -> None:
    p = sub.add_parser(
        "regimes",
        help="label each member regime 1, 2 or 3 and estimate the transition ELRs",
        description="Classify every member of a results directory; print a table and write "
        "DIR/regimes.json.",
    )
    p.add_argument("dir", help="results directory of a sweep or fine-tune")
    p.add_argument("more", nargs="*", help="with DIR: the shard directories of one run")
    p.add_argument("--random-walk", help="results of the same grid run with --random-walk")
    p.add_argument("--out", help="where regimes.json goes (default: DIR; required for shards)")
    p.add_argument("--quiet", action="store_true", help="write regimes.json only")
    p.set_defaults(func=_cmd_regimes)


def _cmd_regimes(args) -> int:
    from three_regimes_jax.analysis.report import run_regimes_command

    dirs = [args.dir, *args.more] if args.more else args.dir
    _, table = run_regimes_command(dirs, random_walk=args.random_walk, out=args.out)
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
    add_config_flags(
        p,
        ("model", "data", "train", "run"),
        # It searches ELRs on the sphere: the whole-space flags do not apply.
        exclude=("--elrs", "--random-walk", *WHOLE_FLAGS),  # --shard: K/N jobs, one --out
        required=("--epochs",),
    )
    p.add_argument("--elr-range", required=True, help="LO,HI, e.g. 1e-6,10")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--points", type=int, default=8, help="ELRs per round")
    _add_output(p)
    p.set_defaults(func=_cmd_find_transitions)


def _cmd_find_transitions(args) -> int:
    from three_regimes_jax.studies.transitions import (
        format_transitions,
        parse_elr_range,
        run_find_transitions_command,
    )

    elr_range = parse_elr_range(args.elr_range)
    shard = vars(args).pop("shard", "")  # of each round's grid, not of this base config
    base = config_from_args(args, elrs=(elr_range[0],))
    report = run_find_transitions_command(
        base,
        elr_range,
        args.rounds,
        args.points,
        args.epochs,
        args.out,
        overwrite=args.overwrite,
        progress=not args.quiet,
        shard=shard,
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
        help="overview, diagram, scatter, groups, filters, filtersteps, sharpness, lc, "
        "randomwalk, toy or all (default)",
    )
    p.add_argument("--out", help="figure directory (default: DIR/figures of the first input)")
    p.add_argument(
        "--member", help="member for --kind groups or filters: ELR or ELR:SEED, e.g. 1e-3:0"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from plotting import run_plot

    if args.member is not None and args.kind not in ("groups", "filters", "filtersteps", "all"):
        raise UserError(
            f"--member applies to --kind groups, filters and filtersteps only, not {args.kind}; "
            "drop --member or pick one of those kinds"
        )
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
    _add_merge(sub)
    _add_plan(sub)
    _add_regimes(sub)
    _add_find_transitions(sub)
    _add_plot(sub)
    _add_experiment(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (see :func:`~three_regimes_jax.cli_errors.guarded`)."""
    from three_regimes_jax.cli_errors import guarded

    return guarded(lambda: _dispatch(argv), PROG)


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
