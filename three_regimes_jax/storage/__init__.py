"""Storage: the results directory format and Orbax checkpoints of whole grids.

Knows nothing about models or training: it saves and restores pytrees, arrays
and JSON (see docs/ARCHITECTURE.md).
"""
