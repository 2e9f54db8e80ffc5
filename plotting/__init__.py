"""Figures of the three_regimes_jax experiments (matplotlib, no pyplot global state).

Reads results only through the results format (``three_regimes_jax.storage.results``,
numpy only) and never imports training code or JAX.  Every figure function
returns a :class:`matplotlib.figure.Figure` on an Agg canvas:

- :func:`overview`: train loss, test error, eff. gradient norm vs epoch (Fig. 1 left);
- :func:`diagram`: eff. gradient norm and test error vs train loss (Fig. 1 right, 3, 5, ...);
- :func:`scatter`: final metrics vs ELR with regime borders;
- :func:`groups`: per-group ELR, eff. gradient norm and ESS (Fig. 4, 20, 21);
- :func:`filters`: per-filter ELR vs eff. gradient norm over final epochs (Fig. 4, 21);
- :func:`lc`: linear connectivity from interpolate files (Fig. 19, 22);
- :func:`randomwalk`: SGD vs random walk, step cosines (Fig. 24);
- :func:`toy_figures`: the toy's Fig. 2 and 8 (module :mod:`plotting.toy`);
  :func:`write_toy_figures` writes them as PNGs into a toy run's directory.

:func:`save_figure` writes PNG + PDF atomically; :func:`run_plot` is the
``three-regimes plot`` command.
"""

from plotting.common import save_figure
from plotting.connectivity import lc
from plotting.figures import diagram, overview, randomwalk
from plotting.filters import filters
from plotting.final import groups, load_regimes, scatter
from plotting.run import KINDS, run_plot, toy_figures
from plotting.style import ElrPalette
from plotting.toy import write_toy_figures

__all__ = [
    "KINDS",
    "ElrPalette",
    "diagram",
    "filters",
    "groups",
    "lc",
    "load_regimes",
    "overview",
    "randomwalk",
    "run_plot",
    "save_figure",
    "scatter",
    "toy_figures",
    "write_toy_figures",
]
