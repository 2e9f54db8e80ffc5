"""The epoch loop shared by sweeps and fine-tunes: train, measure, record.

:func:`train_grid` runs compiled epochs of a :class:`~three_regimes_jax.engine.train.GridTrainer`
and records, after each epoch, every per-member measurement on the host in a
:class:`History`, whose :meth:`History.arrays` are the arrays of ``metrics.npz``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from three_regimes_jax.engine.data import Dataset
from three_regimes_jax.engine.diagnostics import ess_spread
from three_regimes_jax.engine.grid import GridState, finite_members
from three_regimes_jax.engine.metrics import SHARPNESS_KEYS
from three_regimes_jax.engine.stats import n_filters
from three_regimes_jax.engine.trainer import GridTrainer


@dataclasses.dataclass(frozen=True)
class SharpnessSettings:
    """When and how sharpness is measured during training.

    Attributes:
      every: measure every K epochs and at the last one (0: never).
      size: the fixed training subset: the first ``size`` examples.
      probes: Hutchinson probes of the FIM and Hessian traces.
      iters: Lanczos steps of the top eigenvalues.
    """

    every: int = 0
    size: int = 2048
    probes: int = 8
    iters: int = 20


# Measured at fixed parameters after each epoch (and at the start): finite at the start.
EPOCH_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "eff_grad_norm", "si_norm")
# Means over an epoch's steps: NaN at the start, where no step was taken.
STEP_METRICS = ("batch_loss", "batch_acc", "eff_grad_norm_traj", "step_cos")
GROUP_METRICS = ("group_elr", "group_eff_grad_norm", "group_ess")
FILTER_METRICS = ("filter_elr", "filter_eff_grad_norm", "filter_ess")
# Sharpness measures that are traces (totals over the SI parameters).
TRACE_KEYS = ("grad_cov_trace", "hessian_trace", "fim_trace")
# Key of the sharpness probes (folded with the epoch; shared by all members).
SHARPNESS_SEED = 2022
# Every per-epoch array of metrics.npz with a [G, T, ...] shape (filter ones if recorded).
SERIES = (*EPOCH_METRICS, *STEP_METRICS, "adjacent_cos", *GROUP_METRICS)


@dataclasses.dataclass
class History:
    """Per-epoch measurements collected on the host while a grid trains.

    Attributes:
      epochs: absolute epoch numbers recorded (1-based: after that many epochs).
      series: name -> list (one entry per recorded epoch) of ``[G, ...]`` arrays.
      sharpness_epochs: epochs at which sharpness was measured.
      sharpness: name -> list of ``[G]`` arrays.
      diverged_epoch: ``[G]`` first non-finite epoch, -1 if none.
      step_log: per-step per-filter statistics (``--filter-log-steps``):
        ``step`` and ``epoch`` (ints), and ``filter_elr``, ... (``[G', n_filters]``
        each, for the logged members ``members``).
    """

    epochs: list[int]
    series: dict[str, list[np.ndarray]]
    sharpness_epochs: list[int]
    sharpness: dict[str, list[np.ndarray]]
    diverged_epoch: np.ndarray
    step_log: dict[str, list] = dataclasses.field(default_factory=dict)

    @classmethod
    def empty(cls, g: int, filter_groups: bool = False) -> History:
        """No epoch recorded yet, for ``g`` members (with per-filter series if asked)."""
        keys = (*SERIES, *FILTER_METRICS) if filter_groups else SERIES
        return cls([], {k: [] for k in keys}, [], {k: [] for k in SHARPNESS_KEYS}, np.full(g, -1))

    def truncate(self, epoch: int) -> History:
        """The history up to and including ``epoch`` (for resuming)."""
        keep = sum(e <= epoch for e in self.epochs)
        keep_s = sum(e <= epoch for e in self.sharpness_epochs)
        div = np.where(self.diverged_epoch > epoch, -1, self.diverged_epoch)
        keep_l = sum(e <= epoch for e in self.step_log.get("epoch", []))
        return History(
            self.epochs[:keep],
            {k: v[:keep] for k, v in self.series.items()},
            self.sharpness_epochs[:keep_s],
            {k: v[:keep_s] for k, v in self.sharpness.items()},
            div,
            {k: v[:keep_l] for k, v in self.step_log.items()},
        )

    def raw_arrays(self) -> dict[str, np.ndarray]:
        """Everything recorded, as arrays (no NaN masking); inverse of :meth:`from_raw`."""
        out = {
            "epochs": np.asarray(self.epochs, np.int64),
            "sharpness_epochs": np.asarray(self.sharpness_epochs, np.int64),
            "diverged_epoch": np.asarray(self.diverged_epoch, np.int64),
        }
        for prefix, d in (("series/", self.series), ("sharpness/", self.sharpness)):
            out.update({prefix + k: np.stack(v, axis=1) for k, v in d.items() if v})
        out.update({"steplog/" + k: np.asarray(v) for k, v in self.step_log.items() if v})
        return out

    @classmethod
    def from_raw(cls, raw: dict[str, np.ndarray]) -> History:
        """Rebuilds a history saved with :meth:`raw_arrays`."""
        h = cls.empty(len(raw["diverged_epoch"]), "series/filter_elr" in raw)
        h.epochs = [int(e) for e in raw["epochs"]]
        h.sharpness_epochs = [int(e) for e in raw["sharpness_epochs"]]
        h.diverged_epoch = np.array(raw["diverged_epoch"], np.int64)
        for prefix, d in (("series/", h.series), ("sharpness/", h.sharpness)):
            for k in d:
                if prefix + k in raw:
                    d[k] = list(np.moveaxis(raw[prefix + k], 1, 0))
        for k, v in raw.items():
            if k.startswith("steplog/"):
                h.step_log[k.removeprefix("steplog/")] = list(v)
        return h

    def arrays(self, n_si_params: int | None = None) -> dict[str, np.ndarray]:
        """Stacked ``[G, T, ...]`` arrays, NaN from each member's divergence on.

        With ``n_si_params``, the sharpness traces also come per SI parameter
        (``*_trace_per_param``: trace / number of SI parameters, as the
        official code reports them); the plain ones are totals.
        """
        out: dict[str, np.ndarray] = {"epoch": np.asarray(self.epochs, np.int64)}
        g = len(self.diverged_epoch)
        for k, v in self.series.items():
            out[k] = np.stack(v, axis=1).astype(np.float32) if v else np.zeros((g, 0), np.float32)
        out["sharpness_epoch"] = np.asarray(self.sharpness_epochs, np.int64)
        for k, v in self.sharpness.items():
            out[k] = np.stack(v, axis=1).astype(np.float32) if v else np.zeros((g, 0), np.float32)
        for i, e in enumerate(self.diverged_epoch):
            if e >= 0:
                for k in (*self.series, *self.sharpness):
                    ep = out["sharpness_epoch" if k in self.sharpness else "epoch"]
                    out[k][i, ep >= e] = np.nan
        if n_si_params:
            for k in TRACE_KEYS:
                out[f"{k}_per_param"] = out[k] / np.float32(n_si_params)
        out["group_ess_spread"] = np.asarray(ess_spread(out["group_ess"]), np.float32)
        if self.step_log.get("step"):
            log = self.step_log
            out["filter_log_step"] = np.asarray(log["step"], np.int64)
            out["filter_log_member"] = np.asarray(log["members"][0], np.int64)
            for k in FILTER_METRICS:
                out[k.replace("filter_", "filter_log_")] = np.stack(log[k], axis=1).astype(
                    np.float32
                )
        out["diverged"] = self.diverged_epoch >= 0
        out["diverged_epoch"] = self.diverged_epoch.copy()
        return out


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """A dataset's arrays on device, plus the fixed sharpness subset."""

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    @classmethod
    def from_dataset(cls, ds: Dataset) -> DeviceData:
        """Moves a :class:`Dataset` to the default device (once)."""
        return cls(*(jnp.asarray(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)))


def _progress(total: int, enabled: bool, g: int, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, disable=not enabled, desc=f"{g} members", unit="epoch"
    )


def _sharpness_due(epoch: int, last: int, every: int) -> bool:
    return every > 0 and (epoch % every == 0 or epoch == last)


def _sharpness_subset(data: DeviceData, size: int) -> tuple[jax.Array, jax.Array]:
    """The first ``size`` training examples (0: all of them)."""
    n = data.x_train.shape[0] if size == 0 else min(size, data.x_train.shape[0])
    return data.x_train[:n], data.y_train[:n]


def _step_nans(trainer: GridTrainer, state: GridState) -> dict[str, np.ndarray]:
    """NaN entries of the step metrics for an epoch without steps (the start)."""
    g = state.size
    shapes = {k: (g,) for k in STEP_METRICS}
    for k in GROUP_METRICS:
        shapes[k] = (g, len(trainer.group_names))
    for k in FILTER_METRICS:
        if trainer.filter_groups:
            shapes[k] = (g, n_filters(state.params, trainer.si_mask))
    return {k: np.full(shape, np.nan, np.float32) for k, shape in shapes.items()}


def train_grid(
    trainer: GridTrainer,
    state: GridState,
    data: DeviceData,
    sharpness: SharpnessSettings,
    *,
    start_epoch: int,
    end_epoch: int,
    history: History | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, GridState, History], None] | None = None,
    step_norms: Callable[[int], np.ndarray] | None = None,
    log_steps: tuple[int, int] | None = None,
    log_members: list[int] | None = None,
) -> tuple[GridState, History]:
    """Measures the start, then trains epochs ``start_epoch .. end_epoch - 1`` measuring after each.

    With a new (empty) history, the state at ``start_epoch`` is measured first:
    the paper's curves start at the initialization (a fine-tune's at its source
    checkpoint).  Step metrics (``batch_loss``, ``step_cos``, the per-group
    statistics, ...) are NaN there, since no step was taken.

    Args:
      trainer: the compiled trainer.
      state: the grid state after ``start_epoch`` epochs.
      data: device arrays.
      sharpness: when and how to measure sharpness.
      start_epoch: epochs already done (data order continues from there).
      end_epoch: total epochs after this call.
      history: measurements of the epochs already done (appended to).
      progress: tqdm bar over epochs.
      on_epoch: called as ``on_epoch(epoch, state, history)`` after each epoch
        (e.g. to checkpoint).
      step_norms: ``step_norms(epoch) -> [G]``: the effective gradient norm
        the random walk's steps take during ``epoch`` (counted from 1).
      log_steps: ``(start, end)``: log the per-filter statistics of every step
        in ``[start, end)`` (global step numbers) in ``history.step_log``.
      log_members: the members to log (default: all).

    Returns:
      The final state and the history.
    """
    history = history or History.empty(state.size, trainer.filter_groups)
    subset = _sharpness_subset(data, sharpness.size)
    n = data.x_train.shape[0]
    bs = min(trainer.batch_size, n)
    n_batches = n // bs + int(bool(n % bs) and not trainer.drop_last)
    members = list(range(state.size)) if log_members is None else list(log_members)

    def _log(history: History, steps: dict, first: int, epoch: int) -> None:
        for j in range(steps["filter_elr"].shape[1]):
            if log_steps[0] <= first + j < log_steps[1]:
                log = history.step_log
                log.setdefault("step", []).append(first + j)
                log.setdefault("epoch", []).append(epoch)
                log.setdefault("members", []).append(np.asarray(members))
                for k in FILTER_METRICS:
                    log.setdefault(k, []).append(np.asarray(steps[k][members, j]))

    def record(epoch, state, m, checked, *, start: bool = False) -> None:
        newly = ~finite_members(state, checked) & (history.diverged_epoch < 0)
        history.diverged_epoch[newly] = epoch
        history.epochs.append(epoch)
        for k in history.series:
            if k in m:
                history.series[k].append(np.asarray(m[k]))
        due = _sharpness_due(epoch, end_epoch, sharpness.every)
        if due or (start and sharpness.every > 0):
            key = jax.random.fold_in(jax.random.key(SHARPNESS_SEED), epoch)
            sh = trainer.sharpness(
                state, *subset, key, n_probes=sharpness.probes, n_iters=sharpness.iters
            )
            history.sharpness_epochs.append(epoch)
            for k, v in jax.device_get(sh).items():
                history.sharpness[k].append(np.asarray(v))

    if not history.epochs:
        eval_m = jax.device_get(
            trainer.evaluate(state, data.x_train, data.y_train, data.x_test, data.y_test)
        )
        g = state.size
        m = {**_step_nans(trainer, state), **eval_m, "adjacent_cos": np.full(g, np.nan, np.float32)}
        record(start_epoch, state, m, eval_m, start=True)
    with _progress(end_epoch, progress, state.size, start_epoch) as bar:
        for epoch in range(start_epoch, end_epoch):
            prev = state.params
            norm = None if step_norms is None else step_norms(epoch + 1)
            first = int(state.step[0]) if log_steps else 0  # a host sync only when logging
            if log_steps and first < log_steps[1] and first + n_batches > log_steps[0]:
                state, train_m = trainer.train_epoch_logged(
                    state, data.x_train, data.y_train, epoch, norm
                )
                _log(history, jax.device_get(train_m.pop("steps")), first, epoch + 1)
            else:
                state, train_m = trainer.train_epoch(state, data.x_train, data.y_train, epoch, norm)
            eval_m = trainer.evaluate(state, data.x_train, data.y_train, data.x_test, data.y_test)
            cos = trainer.adjacent_cos(prev, state.params)
            m = jax.device_get({**train_m, **eval_m, "adjacent_cos": cos})
            done = epoch + 1
            record(done, state, m, m)
            alive = history.diverged_epoch < 0
            if alive.any():
                lo, hi = m["train_loss"][alive].min(), m["train_loss"][alive].max()
                bar.set_postfix_str(
                    f"train loss {lo:.3g}..{hi:.3g}, diverged {int((~alive).sum())}"
                )
            bar.update(1)
            if on_epoch is not None:
                on_epoch(done, state, history)
    return state, history
