"""Benchmarks: ``python -m lithos_atom.bench``."""
