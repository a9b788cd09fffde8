"""The DP twin generator: a private table -> a DP-trained posterior -> K synthetic twins.

Deliberately no re-exports: the node imports settings.py, privacy.py and worker.py, which load
no JAX; models, dpsvi, train, sample and release (JAX, NumPyro, d3p) load only in the worker
process or the CLI. docs/GENERATOR.md describes the modules.
"""
