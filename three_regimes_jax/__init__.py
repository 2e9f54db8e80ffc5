"""three_regimes_jax: scale-invariant networks trained on the sphere at fixed ELRs.

Public API (re-exports only); see README.md and DESIGN.md.
"""

from three_regimes_jax.data import DATASETS, DataError, Dataset, load_dataset
from three_regimes_jax.errors import UserError
from three_regimes_jax.grid import GridState, GridTrainer, member, stack
from three_regimes_jax.models import MLPSI, MODELS, ConvNetSI, build_model, init_model
from three_regimes_jax.results import Results, load_results
from three_regimes_jax.sphere import (
    GroupStats,
    ScaleInvariant,
    group_stats,
    project_to_sphere,
    scale_invariant,
    si_group_names,
    si_norm,
    sphere_sgd,
    split_si,
)
from three_regimes_jax.sweep import SweepConfig, run_sweep

__version__ = "0.1.0"

__all__ = [
    "DATASETS",
    "MLPSI",
    "MODELS",
    "ConvNetSI",
    "DataError",
    "Dataset",
    "GridState",
    "GridTrainer",
    "GroupStats",
    "Results",
    "ScaleInvariant",
    "SweepConfig",
    "UserError",
    "build_model",
    "group_stats",
    "init_model",
    "load_dataset",
    "load_results",
    "member",
    "project_to_sphere",
    "run_sweep",
    "scale_invariant",
    "si_group_names",
    "si_norm",
    "sphere_sgd",
    "split_si",
    "stack",
]
