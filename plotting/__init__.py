"""Figures of the three_regimes_jax experiments (matplotlib, no pyplot global state)."""
