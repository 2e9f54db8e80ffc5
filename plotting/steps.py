"""Per-filter statistics by iteration (paper Fig. 20), from ``--filter-log-steps`` runs.

Three panels against the global step number: every logged filter's effective
gradient norm, ELR and ESS, thin lines coloured by layer, for one logged
member (``--member``, else the first logged one).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from plotting.common import MemberSpec, Run, RunLike, as_runs, select_members, suptitle
from plotting.style import new_figure
from three_regimes_jax.errors import UserError

PANELS = (
    ("filter_log_eff_grad_norm", "effective gradient norm"),
    ("filter_log_elr", "ELR"),
    ("filter_log_ess", "ESS"),
)


def has_filter_steps(run: Run) -> bool:
    """Whether the run logged per-step filter statistics (``--filter-log-steps``)."""
    return run.has("filter_log_elr") and np.size(run.metrics["filter_log_step"]) > 0


def filter_steps(run: RunLike, *, member: MemberSpec | None = None) -> Figure:
    """Fig. 20: per-filter effective gradient norm, ELR and ESS by iteration.

    Args:
      run: a results directory made with ``--filter-log-steps``.
      member: the member (``ELR`` or ``ELR:SEED``); default the first logged one.

    Returns:
      A figure with three log-y panels.

    Raises:
      UserError: the run logged no steps, or not for that member.
    """
    (r,) = as_runs([run])
    if not has_filter_steps(r):
        raise UserError(f"{r.label} has no per-step filter log; run it with --filter-log-steps")
    logged = [int(i) for i in np.asarray(r.metrics["filter_log_member"]).ravel()]
    wanted = select_members(r, member) if member is not None else logged
    pick = next((i for i in wanted if i in logged), None)
    if pick is None:
        raise UserError(f"--member {member} was not logged in {r.label} (--filter-log-elrs)")
    row = logged.index(pick)
    steps = np.asarray(r.metrics["filter_log_step"], np.int64)
    layer = np.asarray(r.metrics.get("filter_group", np.zeros(0)), np.int64).ravel()
    fig = new_figure(15.0, 4.4)
    for ax, (name, label) in zip(fig.subplots(1, 3), PANELS, strict=True):
        values = np.asarray(r.metrics[name], np.float64)[row]  # [S, n_filters]
        for f in range(values.shape[1]):
            color = f"C{int(layer[f]) % 10}" if layer.size == values.shape[1] else "C0"
            ax.plot(steps, values[:, f], color=color, lw=0.5, alpha=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"{label} of each filter")
        ax.grid(True, which="major", alpha=0.3)
    title = f"Per-filter statistics by iteration, ELR {r.elr[pick]:g}, seed {int(r.seed[pick])}"
    suptitle(fig, title, [r])
    return fig
