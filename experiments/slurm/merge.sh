#!/usr/bin/env bash
# Joins the shards of experiments/slurm/sweep_array.sh into RUN_DIR/merged.
#
#   sbatch --dependency=afterok:<array job id> experiments/slurm/merge.sh RUN_DIR
#
# DRY_RUN=1 prints the command instead of running it.
#SBATCH --job-name=three-regimes-merge
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: sbatch $0 RUN_DIR" >&2
    exit 2
fi
shopt -s nullglob
shards=("$1"/shard_*)
if [[ ${#shards[@]} -eq 0 ]]; then
    echo "$0: no $1/shard_* directories" >&2
    exit 2
fi
cmd=(${THREE_REGIMES:-three-regimes} merge "${shards[@]}" --out "$1/merged")
if [[ -n "${DRY_RUN:-}" ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
