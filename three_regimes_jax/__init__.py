"""three_regimes_jax: scale-invariant networks trained on the sphere at fixed ELRs.

Public API (re-exports only; see README.md).  Names are imported lazily, on
first use, so that light modules (``three_regimes_jax.results``, used by the
plotting package) load without JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DATASETS": "data",
    "DataError": "data",
    "Dataset": "data",
    "load_dataset": "data",
    "UserError": "errors",
    "GridState": "grid",
    "GridTrainer": "grid",
    "member": "grid",
    "stack": "grid",
    "MODELS": "models",
    "ConvNetSI": "models",
    "MLPSI": "models",
    "build_model": "models",
    "init_model": "models",
    "Results": "results",
    "load_results": "results",
    "GroupStats": "sphere",
    "ScaleInvariant": "sphere",
    "group_stats": "sphere",
    "project_to_sphere": "sphere",
    "scale_invariant": "sphere",
    "si_group_names": "sphere",
    "si_norm": "sphere",
    "sphere_sgd": "sphere",
    "split_si": "sphere",
    "SweepConfig": "sweep",
    "run_sweep": "sweep",
    "FinetuneConfig": "finetune",
    "run_finetune": "finetune",
    "load_checkpoint": "checkpoint",
    "GridCheckpointer": "checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
