"""Analysis of results: regime classification and its reports (numpy only, no JAX).

See docs/ARCHITECTURE.md.
"""
