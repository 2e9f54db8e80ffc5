"""Shared fixtures: tiny real data and compiled trainers reused across tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parents[1]
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist"
_JAX_CACHE: str | None = None


def pytest_configure(config):
    """A fresh per-session compilation cache: identical programs compile once.

    Many tests build the same trainer again (``run_sweep`` twice with one config,
    a resume, a fine-tune); XLA compilation dominates their time on CPU. The
    cache is keyed by the program, JAX version and flags, so a hit runs the same
    executable; it starts empty, so nothing carries over between sessions.
    """
    global _JAX_CACHE
    import jax

    _JAX_CACHE = tempfile.mkdtemp(prefix="three-regimes-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", _JAX_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _JAX_CACHE is not None:
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (SHARED_MNIST / "train-labels-idx1-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST} (../shared/data/mnist)")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def digits():
    """The embedded digits dataset (1437 train / 360 test, 8x8x1)."""
    from three_regimes_jax.engine.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def tiny(digits):
    """A small slice of digits as device arrays: 200 train, 100 test."""
    import jax.numpy as jnp

    return (
        jnp.asarray(digits.x_train[:200]),
        jnp.asarray(digits.y_train[:200]),
        jnp.asarray(digits.x_test[:100]),
        jnp.asarray(digits.y_test[:100]),
    )


@pytest.fixture(scope="session")
def tiny_mlp():
    """A small MLP-SI (8x8 inputs, hidden 32-16) and its SI mask."""

    from three_regimes_jax.engine.models import build_model, si_mask_of

    model = build_model("mlp_si", 10, hidden=(32, 16))
    return model, si_mask_of(model, (8, 8, 1))


@pytest.fixture(scope="session")
def trainers(tiny_mlp):
    """Compiled GridTrainers for the tiny MLP, one per strategy (batch 64)."""
    from three_regimes_jax.engine.trainer import GridTrainer

    model, mask = tiny_mlp
    return {s: GridTrainer(model, mask, batch_size=64, strategy=s) for s in ("vmap", "map")}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# The plotting tests' synthetic results (session fixtures ``inputs`` and ``new_inputs``).
from plot_data import inputs, new_inputs  # noqa: E402, F401
