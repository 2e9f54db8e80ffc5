"""three_regimes_jax: scale-invariant networks trained on the sphere at fixed ELRs, and beyond.

Public API (re-exports only; see README.md).  Names are imported lazily, on
first use, so that light modules (``three_regimes_jax.storage.results``, used by the
plotting package) load without JAX.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DATASETS": "engine.data",
    "DataError": "engine.data",
    "Dataset": "engine.data",
    "load_dataset": "engine.data",
    "UserError": "errors",
    "GridState": "engine.grid",
    "GridTrainer": "engine.trainer",
    "member": "engine.grid",
    "stack": "engine.grid",
    "MODELS": "engine.models",
    "ConvNetSI": "engine.models",
    "MLPSI": "engine.models",
    "ResNet18SI": "engine.models",
    "Transformer": "engine.models",
    "build_model_from_config": "engine.models",
    "si_sets": "engine.sphere",
    "individually_si": "engine.sphere",
    "whole_sgd_swept": "engine.optim",
    "lr_schedule": "engine.optim",
    "random_crop_flip": "engine.augment",
    "build_model": "engine.models",
    "init_model": "engine.models",
    "Results": "storage.results",
    "load_results": "storage.results",
    "GroupStats": "engine.stats",
    "ScaleInvariant": "engine.sphere",
    "group_stats": "engine.stats",
    "project_to_sphere": "engine.sphere",
    "scale_invariant": "engine.sphere",
    "si_group_names": "engine.sphere",
    "si_norm": "engine.sphere",
    "sphere_sgd": "engine.sphere",
    "sphere_optimizer": "engine.sphere_opt",
    "SphereOptState": "engine.sphere_opt",
    "split_si": "engine.sphere",
    "Config": "config",
    "ModelConfig": "config",
    "DataConfig": "config",
    "TrainConfig": "config",
    "MeasureConfig": "config",
    "CheckpointConfig": "config",
    "RunConfig": "config",
    "FinetuneConfig": "config",
    "run_sweep": "studies.sweep",
    "merge_shards": "studies.merge",
    "merged_results": "storage.shards",
    "sphere_step": "engine.sphere",
    "leaf_sums": "engine.sphere",
    "finetune_config": "studies.finetune",
    "run_finetune": "studies.finetune",
    "make_optimizer": "engine.optim",
    "make_train_epoch": "engine.train",
    "make_evaluate": "engine.train",
    "load_checkpoint": "storage.checkpoint",
    "GridCheckpointer": "storage.checkpoint",
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
