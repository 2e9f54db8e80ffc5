"""The engine: the sphere optimizer, models, data, the grid and its compiled training functions.

Imports only ``three_regimes_jax.errors`` and ``three_regimes_jax.config`` from
the rest of the package (see docs/ARCHITECTURE.md).
"""
