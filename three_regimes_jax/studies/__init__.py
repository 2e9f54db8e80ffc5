"""Studies: what a researcher runs: sweeps, fine-tunes, interpolation, transitions, the toy.

Each study builds on the engine, stores through ``storage`` and may classify
with ``analysis`` (see docs/ARCHITECTURE.md).
"""
