#!/usr/bin/env bash
# One shard of a three-regimes sweep per SLURM array task (one GPU each).
#
#   sbatch --array=0-7 experiments/slurm/sweep_array.sh RUN_DIR -- SWEEP FLAGS...
#   sbatch --dependency=afterok:<array job id> experiments/slurm/merge.sh RUN_DIR
#
# Task K of an array of N tasks runs `three-regimes sweep SWEEP FLAGS --shard K/N
# --out RUN_DIR/shard_K`, so the array's size is the number of shards (N may not
# exceed the grid's members).  Every task loads the same dataset and trains a
# contiguous block of members; merge.sh joins the N directories into RUN_DIR/merged,
# identical to the unsharded run.  A task that is requeued or rerun with the same
# flags resumes from its checkpoints (--resume) when it has any.
#
# THREE_REGIMES (default: three-regimes) is the command to run, e.g. a venv's.
# DRY_RUN=1 prints the command instead of running it (the tests use it).
#SBATCH --job-name=three-regimes
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=%x-%A_%a.out
set -euo pipefail

if [[ $# -lt 2 || "$2" != "--" ]]; then
    echo "usage: sbatch --array=0-N-1 $0 RUN_DIR -- SWEEP FLAGS..." >&2
    exit 2
fi
run_dir=$1
shift 2
k=${SLURM_ARRAY_TASK_ID:?run under sbatch --array (SLURM_ARRAY_TASK_ID is not set)}
n=${SLURM_ARRAY_TASK_COUNT:?run under sbatch --array (SLURM_ARRAY_TASK_COUNT is not set)}
out="$run_dir/shard_$k"
cmd=(${THREE_REGIMES:-three-regimes} sweep "$@" --shard "$k/$n" --out "$out" --quiet)
if [[ -f "$out/checkpoints/history.npz" && ! -f "$out/config.json" ]]; then
    cmd+=(--resume)  # a requeued task: continue from its checkpoints
fi
if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
