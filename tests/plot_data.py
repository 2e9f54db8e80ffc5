"""Tiny synthetic results for the plotting tests (no training), shared by both test files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.legend import Legend

from three_regimes_jax.storage.results import write_npz, write_results

ROOT = Path(__file__).resolve().parents[1]
ELRS = (1e-3, 1e-2, 1e-1, 1.0)
SEEDS = (0, 1)
T = 12
GROUPS = ("SIDense_0/kernel", "SIDense_1/kernel", "SIDense_2/kernel")
TRANSITIONS = {"1-2": [1e-3, 1e-2], "2-3": [1e-2, 1e-1]}


def _metrics(elrs, seeds, epochs, *, first_epoch=1, rng_seed=0, diverge=None):
    """Plausible per-epoch metrics: converging, equilibrating and random-walk-like members."""
    rng = np.random.default_rng(rng_seed)
    elr = np.repeat(np.asarray(elrs, np.float64), len(seeds))
    seed = np.tile(np.asarray(seeds, np.int64), len(elrs))
    g, n = elr.size, len(GROUPS)
    t = np.arange(first_epoch, first_epoch + epochs, dtype=np.float64)
    level = np.clip(np.log10(elr)[:, None] + 2.5, 0.0, None)  # 0 for small ELRs
    noise = 1.0 + 0.1 * rng.standard_normal((g, epochs))
    train_loss = (0.5 / t[None] ** 0.8 + 0.5 * level**2) * noise
    test_acc = np.clip(0.98 - 0.3 * level + 0.01 * rng.standard_normal((g, epochs)), 0.05, 1)
    eff = (5.0 / np.sqrt(elr))[:, None] * noise
    share = rng.uniform(0.5, 2.0, (g, 1, n))
    group_elr = (
        elr[:, None, None] * n * share / share.mean(-1, keepdims=True) * np.ones((1, epochs, 1))
    )
    group_gn = eff[..., None] / n / np.sqrt(share)
    m = {
        "elr": elr,
        "seed": seed,
        "epoch": t.astype(np.int64),
        "train_loss": train_loss.astype(np.float32),
        "train_acc": np.clip(1.0 - train_loss, 0, 1).astype(np.float32),
        "test_loss": (train_loss * 1.2).astype(np.float32),
        "test_acc": test_acc.astype(np.float32),
        "eff_grad_norm": eff.astype(np.float32),
        "si_norm": np.full((g, epochs), 11.5, np.float32),
        "adjacent_cos": np.clip(1.0 - 0.3 * level, -1, 1) * np.ones((1, epochs)),
        "step_cos": np.ones((g, epochs)),
        "group_ess_spread": rng.uniform(0, 0.1, (g, epochs)),
        "group_elr": group_elr.astype(np.float32),
        "group_eff_grad_norm": group_gn.astype(np.float32),
        "group_ess": (group_elr * group_gn).astype(np.float32),
        "group_names": np.asarray(GROUPS),
        "diverged": np.zeros(g, bool),
        "diverged_epoch": np.full(g, -1, np.int64),
    }
    if diverge is not None:
        member, at = diverge
        for k in ("train_loss", "test_loss", "test_acc", "eff_grad_norm", "group_elr"):
            m[k][member, at:] = np.nan
        m["diverged"][member] = True
        m["diverged_epoch"][member] = first_epoch + at
    return m


def _summary(m):
    rows = [
        {
            "elr": float(m["elr"][i]),
            "seed": int(m["seed"][i]),
            "train_loss": float(m["train_loss"][i, -1]),
            "test_acc": float(m["test_acc"][i, -1]),
            "eff_grad_norm": float(m["eff_grad_norm"][i, -1]),
            "diverged": bool(m["diverged"][i]),
        }
        for i in range(m["elr"].size)
    ]
    return {"members": rows, "seconds": 0.0}


def _config(elrs, seeds, epochs, **extra):
    return {
        "model": "mlp_si",
        "dataset": "digits",
        "elrs": list(elrs),
        "seeds": list(seeds),
        "epochs": epochs,
        "kind": "sweep",
        "format_version": 1,
        **extra,
    }


@pytest.fixture(scope="session")
def inputs(tmp_path_factory):
    """Paths of the synthetic inputs: sweep, rw, finetune (dirs), lc (.npz), toy (dir)."""
    from three_regimes_jax.studies.toy_report import run_toy_command

    base = tmp_path_factory.mktemp("plot_inputs")
    sweep = base / "sweep"
    m = _metrics(ELRS, SEEDS, T, diverge=(7, 8))  # ELR 1, seed 1 diverges at epoch 9
    write_results(sweep, _config(ELRS, SEEDS, T), m, _summary(m))
    members = [
        {
            "elr": float(e),
            "seed": int(s),
            "regime": 1 + min(i // 2, 2),
            "confidence": 0.9,
            "reason": "synthetic",
        }
        for i, (e, s) in enumerate(zip(m["elr"], m["seed"], strict=True))
    ]
    (sweep / "regimes.json").write_text(
        json.dumps({"members": members, "transitions": TRANSITIONS})
    )

    rw = base / "rw"
    m = _metrics((1e-1, 1.0), (0,), T, rng_seed=1)
    m["adjacent_cos"] = np.full_like(m["adjacent_cos"], 0.2)
    m["step_cos"] = np.full_like(m["step_cos"], 0.05)
    write_results(rw, _config((1e-1, 1.0), (0,), T, random_walk=True), m, _summary(m))

    ft = base / "finetune"
    m = _metrics((1e-3, 1e-2), (0,), 6, first_epoch=T + 1, rng_seed=2)
    m = {
        k: (np.concatenate([v, v]) if k not in ("epoch", "group_names") else v)
        for k, v in m.items()
    }
    for k in ("group_elr", "group_eff_grad_norm", "group_ess", "group_names"):
        del m[k]  # a run without per-group statistics: `all` skips its groups figure
    m["source_elr"] = np.repeat([1e-2, 1e-1], 2)
    m["source_epoch"] = np.full(4, T)
    m["source_member"] = np.repeat([2, 4], 2)
    cfg = {
        "kind": "finetune",
        "elrs": [1e-3, 1e-2],
        "epoch": T,
        "epochs": 6,
        "source_config": _config(ELRS, SEEDS, T),
    }
    write_results(ft, cfg, m, _summary(m))

    lc_file = base / "lc.npz"
    alpha = np.linspace(0, 1, 11)
    bump = np.sin(np.pi * alpha)[None]
    ends = np.array([[0.01, 0.05], [0.05, 0.3], [0.2, 0.2]])
    loss = ends[:, :1] * (1 - alpha) + ends[:, 1:] * alpha + 0.1 * bump
    write_npz(
        lc_file,
        {
            "alpha": alpha,
            "train_loss": loss,
            "train_acc": 1 - loss / 3,
            "test_loss": loss * 1.1,
            "test_acc": 0.9 - loss / 3,
            "barrier": loss.max(1) - ends.mean(1),
            "test_barrier": np.zeros(3),
            "a_elr": np.array([1e-3, 1e-2, 1e-2]),
            "b_elr": np.array([1e-2, 1e-1, 1e-2]),
            "a_source_elr": np.array([1e-3, 1e-2, 1e-2]),
            "b_source_elr": np.array([1e-2, 1e-1, 1e-2]),
            "a_seed": np.zeros(3, int),
            "b_seed": np.zeros(3, int),
            "a_epoch": np.array([12, 12, 5]),
            "b_epoch": np.array([12, 12, 10]),
        },
    )

    toy = base / "toy"
    run_toy_command([1, 2, 4], [0.1, 0.2, 0.5], 200, 0, 1, toy)
    return {"sweep": sweep, "rw": rw, "finetune": ft, "lc": lc_file, "toy": toy}


def _legend_titles(fig) -> list[str]:
    return [leg.get_title().get_text() for leg in fig.findobj(Legend)]


def _legend_texts(fig, title: str) -> list[str]:
    legs = [leg for leg in fig.findobj(Legend) if leg.get_title().get_text() == title]
    return [t.get_text() for leg in legs for t in leg.get_texts()]


# --------------------------------------------------------------------------- results with epoch 0

FILTERS = (4, 6, 2)  # filters per group


def _new_format(m):
    """``m`` as written since issue 10: an epoch-0 entry (NaN step metrics), the
    trajectory mean ``eff_grad_norm_traj`` and per-filter statistics whose
    ``1/elr_f`` sum to their group's ``1/elr_i`` (eq. 3)."""
    g = m["elr"].size
    out = dict(m)
    for k, v in m.items():
        if np.ndim(v) >= 2 and k != "group_names":
            first = np.array(v[:, :1], np.float64)
            if k in ("step_cos", "group_elr", "group_eff_grad_norm", "group_ess", "adjacent_cos"):
                first[:] = np.nan
            else:
                first = first * 1.5  # a finite start, away from epoch 1
            out[k] = np.concatenate([first, v], axis=1)
    out["epoch"] = np.concatenate([[0], m["epoch"]])
    out["eff_grad_norm_traj"] = out["eff_grad_norm"] * 1.1
    rng = np.random.default_rng(3)
    elr_f, gn_f = [], []
    for i, nf in enumerate(FILTERS):
        share = rng.uniform(0.5, 2.0, (g, 1, nf))
        inv = 1.0 / m["group_elr"][..., i : i + 1] * share / share.sum(-1, keepdims=True)
        elr_f.append(1.0 / inv)
        gn_f.append(m["group_eff_grad_norm"][..., i : i + 1] / np.sqrt(nf) * share)
    nan0 = np.full((g, 1, sum(FILTERS)), np.nan)
    out["filter_elr"] = np.concatenate([nan0, np.concatenate(elr_f, -1)], 1)
    out["filter_eff_grad_norm"] = np.concatenate([nan0, np.concatenate(gn_f, -1)], 1)
    out["filter_ess"] = out["filter_elr"] * out["filter_eff_grad_norm"]
    return out


@pytest.fixture(scope="session")
def new_inputs(tmp_path_factory):
    """A sweep and a random-walk run in the results format with epoch 0 and filters."""
    base = tmp_path_factory.mktemp("plot_new")
    m = _new_format(_metrics(ELRS, SEEDS, T))
    write_results(base / "sweep", _config(ELRS, SEEDS, T), m, _summary(m))
    rw = _new_format(_metrics((1e-1, 1.0), (0,), T, rng_seed=1))
    rw["step_cos"][:, 1:] = 0.05
    write_results(base / "rw", _config((1e-1, 1.0), (0,), T, random_walk=True), rw, _summary(rw))
    return {"sweep": base / "sweep", "rw": base / "rw"}
