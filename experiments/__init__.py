"""Experiment catalog: one config per figure of the paper, runnable from the command line.

``three-regimes experiment fig1 --variant quick`` runs the steps of
``experiments/configs/fig01.json``; see ``experiments/README.md`` for the table of
figures, commands and times.  The functions live in :mod:`experiments.runner`.
"""

from experiments.runner import (
    experiment_names,
    list_experiments,
    load_experiment,
    run_experiment,
    validate_config,
)

__all__ = [
    "experiment_names",
    "list_experiments",
    "load_experiment",
    "run_experiment",
    "validate_config",
]
